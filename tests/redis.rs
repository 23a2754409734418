//! End-to-end tests of the Redis ingestor: real `redis-server` processes on free ports,
//! real gateway processes, real WebSocket clients.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::redis::{free_port, RedisServer};
use common::{metric_samples, token, Client, Gateway, WAIT};
use coregate_protocol::{ClientMessage, DecodedServerMessage, Encoding};
use serde_json::json;

/// Nothing more may arrive within this after an expected event (duplicates).
const QUIET: Duration = Duration::from_millis(300);

fn node(redis: &RedisServer, extra: &[&str]) -> Gateway {
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str()];
    args.extend_from_slice(extra);
    Gateway::start(&args)
}

/// Connects `alice0`, `alice1`, … until both shards hold at least one connection.
async fn clients_on_every_shard(gw: &Gateway, topics: &[&str]) -> Vec<Client> {
    let mut clients = Vec::new();
    for i in 0..32 {
        let encoding = if i % 2 == 0 {
            Encoding::Json
        } else {
            Encoding::MsgPack
        };
        let mut client =
            Client::ready(gw, &token(&format!("user{i}"), &["channel:*"]), encoding).await;
        client.subscribe(topics).await;
        clients.push(client);
        let (_, text) = gw.get("/metrics").await;
        let per_shard = metric_samples(&text, "coregate_connections");
        if clients.len() >= 4 && per_shard.len() == 2 && per_shard.iter().all(|(_, n)| *n > 0.0) {
            return clients;
        }
    }
    panic!("connections did not spread over both shards");
}

fn assert_event(message: &DecodedServerMessage, op: &str, topic: &str) {
    assert_eq!(message.op, op, "{message:?}");
    assert_eq!(message.topic.as_deref(), Some(topic), "{message:?}");
}

#[tokio::test]
async fn a_redis_publish_reaches_subscribers_on_every_shard() {
    let redis = RedisServer::start().await;
    let gw = node(&redis, &[]);
    gw.wait_ready_status(200, WAIT).await;
    let mut clients = clients_on_every_shard(&gw, &["channel:1"]).await;
    redis.wait_numsub("channel:1", 1).await;
    let payload =
        json!({"op": "message_new", "d": {"id": 7, "text": "hi"}, "exclude_user": "user0"});
    assert_eq!(
        redis
            .publish("channel:1", payload.to_string().as_bytes())
            .await,
        1,
        "one subscriber connection per node, however many clients"
    );
    for client in &mut clients[1..] {
        let message = client.next().await.unwrap();
        assert_event(&message, "message_new", "channel:1");
        assert_eq!(message.d, json!({"id": 7, "text": "hi"}));
    }
    // user0 was excluded: the next thing it sees is the following publication.
    redis.publish("channel:1", br#"{"op":"marker"}"#).await;
    assert_event(&clients[0].next().await.unwrap(), "marker", "channel:1");
    assert_eq!(gw.metric("coregate_ingestor_publications_total").await, 2.0);
}

#[tokio::test]
async fn two_nodes_share_a_typing_event_exactly_once() {
    let redis = RedisServer::start().await;
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let topics = ["channel:9"];
    let mut alice = Client::ready(&a, &token("alice", &["channel:*"]), Encoding::Json).await;
    let mut carol = Client::ready(&a, &token("carol", &["channel:*"]), Encoding::MsgPack).await;
    let mut bob = Client::ready(&b, &token("bob", &["channel:*"]), Encoding::Json).await;
    for client in [&mut alice, &mut carol, &mut bob] {
        client.subscribe(&topics).await;
    }
    redis.wait_numsub("channel:9", 2).await;
    alice
        .send(ClientMessage::TypingStart {
            topic: "channel:9".into(),
        })
        .await;
    for client in [&mut bob, &mut carol] {
        let message = client.next().await.unwrap();
        assert_event(&message, "typing_start", "channel:9");
        assert_eq!(message.d["user_id"], json!("alice"));
        client.expect_silence(QUIET).await;
    }
    alice.expect_silence(Duration::from_millis(50)).await;
    assert_eq!(a.metric("coregate_redis_published_total").await, 1.0);
}

#[tokio::test]
async fn admin_publish_goes_through_redis_to_every_node_once() {
    let redis = RedisServer::start().await;
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let mut on_a = Client::ready(&a, &token("alice", &["server:*"]), Encoding::MsgPack).await;
    let mut on_b = Client::ready(&b, &token("bob", &["server:*"]), Encoding::Json).await;
    on_a.subscribe(&["server:4"]).await;
    on_b.subscribe(&["server:4"]).await;
    redis.wait_numsub("server:4", 2).await;
    let status = a
        .publish(json!({"topic": "server:4", "op": "member_join", "d": {"n": 1}}))
        .await;
    assert_eq!(status, 202);
    for client in [&mut on_a, &mut on_b] {
        let message = client.next().await.unwrap();
        assert_event(&message, "member_join", "server:4");
        assert_eq!(message.d, json!({"n": 1}));
        client.expect_silence(QUIET).await;
    }
    // A topic with no subscriber anywhere: published, delivered to no one.
    assert_eq!(
        a.publish(json!({"topic": "server:5", "op": "x"})).await,
        202
    );
    on_a.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn redis_subscriptions_follow_local_interest() {
    let redis = RedisServer::start().await;
    let gw = node(&redis, &["--redis-prefix", "cg:"]);
    gw.wait_ready_status(200, WAIT).await;
    let listed = || async { redis.channels("cg:channel:*").await };
    assert!(listed().await.is_empty());
    let mut first = Client::ready(&gw, &token("u1", &["channel:*"]), Encoding::Json).await;
    let mut second = Client::ready(&gw, &token("u2", &["channel:*"]), Encoding::Json).await;
    // The automatic topics are subscribed lazily too.
    redis.wait_numsub("cg:user:u1", 1).await;
    redis.wait_numsub("cg:global", 1).await;
    assert!(listed().await.is_empty(), "no interest in any channel yet");
    first.subscribe(&["channel:5", "channel:6"]).await;
    redis.wait_numsub("cg:channel:5", 1).await;
    assert_eq!(listed().await, ["cg:channel:5", "cg:channel:6"]);
    second.subscribe(&["channel:5"]).await;
    first
        .send(ClientMessage::Unsubscribe {
            topics: vec!["channel:5".into(), "channel:6".into()],
        })
        .await;
    first.wait_op("unsubscribed").await;
    redis.wait_numsub("cg:channel:6", 0).await;
    assert_eq!(listed().await, ["cg:channel:5"], "u2 still wants channel:5");
    drop(second);
    redis.wait_numsub("cg:channel:5", 0).await;
    assert!(listed().await.is_empty());
    redis.wait_numsub("cg:user:u2", 0).await;
    // The prefix is applied to deliveries too: a bare channel name reaches no one.
    first.subscribe(&["channel:7"]).await;
    redis.wait_numsub("cg:channel:7", 1).await;
    assert_eq!(redis.publish("channel:7", br#"{"op":"x"}"#).await, 0);
    redis.publish("cg:channel:7", br#"{"op":"y"}"#).await;
    assert_event(&first.next().await.unwrap(), "y", "channel:7");
}

#[tokio::test]
async fn redis_restart_keeps_clients_and_deliveries_resume() {
    let mut redis = RedisServer::start().await;
    let gw = node(&redis, &[]);
    gw.wait_ready_status(200, WAIT).await;
    let mut client = Client::ready(&gw, &token("alice", &["channel:*"]), Encoding::Json).await;
    client.subscribe(&["channel:1"]).await;
    redis.wait_numsub("channel:1", 1).await;

    redis.kill();
    gw.wait_ready_status(503, WAIT).await;
    let (_, body) = gw.get("/ready").await;
    assert!(body.contains("Redis"), "{body}");
    assert_eq!(
        gw.publish(json!({"topic": "channel:1", "op": "lost"}))
            .await,
        503,
        "a publication that would reach no one is refused"
    );
    // The client stays connected and served meanwhile.
    let r#ref = client.send(ClientMessage::Ping).await;
    assert_eq!(client.expect_op("pong").await.r#ref, Some(r#ref));

    redis.restart().await;
    let back = Instant::now();
    // Publish until the first delivery: deliveries resume once the node resubscribed.
    let delivered = loop {
        redis
            .publish("channel:1", br#"{"op":"after_restart"}"#)
            .await;
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(50), client.next()).await
        {
            break message;
        }
        assert!(back.elapsed() < WAIT, "no delivery after Redis came back");
    };
    let took = back.elapsed();
    assert_event(&delivered, "after_restart", "channel:1");
    assert!(
        took < Duration::from_secs(2),
        "deliveries resumed {took:?} after Redis came back"
    );
    gw.wait_ready_status(200, Duration::from_secs(1)).await;
    assert!(gw.metric("coregate_redis_outages_total").await >= 1.0);
    // user:alice, global and channel:1 were subscribed again.
    assert!(gw.metric("coregate_redis_resubscriptions_total").await >= 3.0);
    assert_eq!(gw.metric("coregate_redis_connected").await, 1.0);
}

#[tokio::test]
async fn redis_unreachable_at_start_up() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let gw = Gateway::start(&["--redis-url", &url]);
    let (status, _) = gw.get("/ready").await;
    assert_eq!(status, 503);
    // The node serves anyway.
    let mut client = Client::ready(&gw, &token("alice", &["channel:*"]), Encoding::Json).await;
    client.subscribe(&["channel:2"]).await;
    let redis = RedisServer::start_on(port).await;
    gw.wait_ready_status(200, Duration::from_secs(3)).await;
    redis.wait_numsub("channel:2", 1).await;
    redis.publish("channel:2", br#"{"op":"hello_late"}"#).await;
    assert_event(&client.next().await.unwrap(), "hello_late", "channel:2");
    assert_eq!(
        gw.metric("coregate_redis_outages_total").await,
        0.0,
        "never connected is not an outage"
    );
}

#[tokio::test]
async fn malformed_and_oversize_payloads_are_dropped_and_counted() {
    let redis = RedisServer::start().await;
    let gw = node(&redis, &["--max-message-size", "1024"]);
    let mut client = Client::ready(&gw, &token("alice", &["channel:*"]), Encoding::Json).await;
    client.subscribe(&["channel:3"]).await;
    redis.wait_numsub("channel:3", 1).await;
    let big = format!(r#"{{"op":"big","d":"{}"}}"#, "x".repeat(2000));
    let bad: [&[u8]; 6] = [
        b"not json",
        b"[1,2]",
        br#"{"d":1}"#,
        br#"{"op":""}"#,
        b"{\"op\":\"x\xff\"}",
        big.as_bytes(),
    ];
    for payload in bad {
        redis.publish("channel:3", payload).await;
    }
    redis.publish("channel:3", br#"{"op":"fine"}"#).await;
    assert_event(&client.next().await.unwrap(), "fine", "channel:3");
    client.expect_silence(Duration::from_millis(50)).await;
    assert_eq!(
        gw.metric("coregate_ingestor_malformed_publications_total")
            .await,
        5.0
    );
    assert_eq!(
        gw.metric("coregate_ingestor_oversize_publications_total")
            .await,
        1.0
    );
    assert_eq!(gw.metric("coregate_ingestor_publications_total").await, 1.0);
}

#[tokio::test]
async fn redis_authorizer_allows_members_only() {
    let mut redis = RedisServer::start().await;
    let gw = node(
        &redis,
        &[
            "--authorizer",
            "redis",
            "--members-prefix",
            "m:",
            "--authorizer-cache-ttl",
            "1h",
            // Longer than the pause below: the slow check is answered, not timed out.
            "--authorizer-timeout",
            "2s",
            // Verdicts are cached per shard, and the non-blocking check needs two
            // connections on one shard: one shard makes both observable.
            "--shards",
            "1",
        ],
    );
    gw.wait_ready_status(200, WAIT).await;
    redis.sadd("m:channel:1", "alice").await;
    redis.sadd("m:server:1", "bob").await;
    // Membership alone decides the gated namespaces: alice's token allows no topic.
    let mut alice = Client::ready(&gw, &token("alice", &[]), Encoding::Json).await;
    let r#ref = alice
        .send(ClientMessage::Subscribe {
            topics: vec![
                "channel:1".into(),
                "server:1".into(),
                "channel:2".into(),
                "voice:1".into(),
            ],
            since: None,
        })
        .await;
    let subscribed = alice.expect_op("subscribed").await;
    assert_eq!(subscribed.r#ref, Some(r#ref));
    assert_eq!(subscribed.d["topics"], json!(["channel:1"]));
    let error = alice.expect_op("error").await;
    assert_eq!(error.r#ref, Some(r#ref));
    assert_eq!(error.d["code"], json!("forbidden"));
    // The fixed rules (voice: only through voice_join) first, then the non-members.
    assert_eq!(
        error.d["topics"],
        json!(["voice:1", "server:1", "channel:2"])
    );
    // A claim that would allow the topic does not make a non-member one.
    let mut bob = Client::ready(&gw, &token("bob", &["channel:*"]), Encoding::MsgPack).await;
    bob.send(ClientMessage::Subscribe {
        topics: vec!["channel:1".into()],
        since: None,
    })
    .await;
    let error = bob.wait_op("error").await;
    assert_eq!(error.d["code"], json!("forbidden"));
    assert_eq!(error.d["topics"], json!(["channel:1"]));
    assert_eq!(
        gw.metric("coregate_redis_membership_checks_total").await,
        2.0,
        "one pipelined check for alice's three gated topics, one for bob's"
    );

    // A slow check does not hold the shard: while dave's waits on a paused Redis, erin,
    // on the same shard, gets her pong at once. (`CLIENT PAUSE` rather than `DEBUG
    // SLEEP`: Redis 7 refuses DEBUG unless `enable-debug-command` is set.)
    redis.sadd("m:channel:3", "dave").await;
    redis.sadd("m:channel:4", "frank").await;
    redis.sadd("m:channel:5", "gina").await;
    let mut gina = Client::ready(&gw, &token("gina", &[]), Encoding::Json).await;
    let mut dave = Client::ready(&gw, &token("dave", &[]), Encoding::Json).await;
    let mut erin = Client::ready(&gw, &token("erin", &[]), Encoding::MsgPack).await;
    let mut frank = Client::ready(&gw, &token("frank", &[]), Encoding::Json).await;
    let pause = Duration::from_millis(500);
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(pause.as_millis() as u64)
        .arg("ALL")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    let paused = Instant::now();
    let dave_ref = dave
        .send(ClientMessage::Subscribe {
            topics: vec!["channel:3".into()],
            since: None,
        })
        .await;
    // Frank leaves before his check is answered: the late answer must not subscribe
    // a connection that is gone.
    frank
        .send(ClientMessage::Subscribe {
            topics: vec!["channel:4".into()],
            since: None,
        })
        .await;
    drop(frank);
    // Gina changes her mind before her check is answered: her unsubscribe, the later
    // word, wins over the late answer.
    gina.send(ClientMessage::Subscribe {
        topics: vec!["channel:5".into()],
        since: None,
    })
    .await;
    gina.send(ClientMessage::Unsubscribe {
        topics: vec!["channel:5".into()],
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pinged = Instant::now();
    let ping_ref = erin.send(ClientMessage::Ping).await;
    let pong = erin.expect_op("pong").await;
    let pong_took = pinged.elapsed();
    assert_eq!(pong.r#ref, Some(ping_ref));
    assert!(
        pong_took < Duration::from_millis(250),
        "pong took {pong_took:?} while a membership check was outstanding"
    );
    let subscribed = dave.expect_op("subscribed").await;
    let check_took = paused.elapsed();
    assert_eq!(subscribed.r#ref, Some(dave_ref));
    assert_eq!(subscribed.d["topics"], json!(["channel:3"]));
    // Redis answered only once the pause was over, long after erin's pong: the check
    // was outstanding all along.
    assert!(
        check_took >= pause - Duration::from_millis(50),
        "dave was answered after {check_took:?}, within the pause"
    );
    redis.wait_numsub("channel:3", 1).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        redis.numsub("channel:4").await,
        0,
        "frank was not subscribed"
    );
    gina.wait_op("unsubscribed").await;
    let late = gina.wait_op("subscribed").await;
    assert_eq!(
        late.d["topics"],
        json!([]),
        "channel:5 left out of the late answer"
    );
    assert_eq!(
        redis.numsub("channel:5").await,
        0,
        "gina stays unsubscribed"
    );

    // Redis down: a topic that cannot be checked is refused `not_ready`, never granted;
    // a cached verdict still stands.
    redis.kill();
    gw.wait_ready_status(503, WAIT).await;
    let mut carol = Client::ready(&gw, &token("carol", &["channel:*"]), Encoding::Json).await;
    carol
        .send(ClientMessage::Subscribe {
            topics: vec!["channel:1".into()],
            since: None,
        })
        .await;
    let error = carol.wait_op("error").await;
    assert_eq!(error.d["code"], json!("not_ready"));
    assert_eq!(error.d["topics"], json!(["channel:1"]));
    let mut alice_again = Client::ready(&gw, &token("alice", &[]), Encoding::Json).await;
    let reply = alice_again.subscribe(&["channel:1"]).await;
    assert_eq!(reply.d["topics"], json!(["channel:1"]));
    let mut bob_again = Client::ready(&gw, &token("bob", &["channel:*"]), Encoding::Json).await;
    bob_again
        .send(ClientMessage::Subscribe {
            topics: vec!["channel:1".into()],
            since: None,
        })
        .await;
    let error = bob_again.wait_op("error").await;
    assert_eq!(
        error.d["code"],
        json!("forbidden"),
        "a cached denial stands too"
    );
    assert!(
        gw.metric("coregate_redis_membership_check_errors_total")
            .await
            >= 1.0
    );
}
