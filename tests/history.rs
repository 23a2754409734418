//! End to end: history and recovery (docs/protocol.md §4–§6) against real gateways,
//! real `redis-server`s and real WebSocket clients. A client that drops while
//! publications flow reconnects with `since` and gets exactly what it missed, in order,
//! none twice, then the live ones; a gap beyond the history's size, or a Redis that
//! restarted empty (a new epoch), says `recovered: false` with the current position; a
//! backend publishing with `FCALL coregate_publish` directly; two nodes; the embedded
//! bus; the `history` op; a plain `PUBLISH` to a history topic counted.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::redis::RedisServer;
use common::{token, Client, Gateway};
use coregate_protocol::{ClientMessage, DecodedServerMessage, Encoding, StreamPosition};
use serde_json::{json, Value};

const TOPIC: &str = "channel:1";

fn alice_token() -> String {
    token("alice", &["channel:*"])
}

async fn publish(gw: &Gateway, n: u64) {
    let status = gw
        .publish(json!({"topic": TOPIC, "op": "message_new", "d": {"n": n}}))
        .await;
    assert_eq!(status, 202);
}

/// Subscribes to [`TOPIC`], with `since` if given; the `subscribed` reply.
async fn subscribe(client: &mut Client, since: Option<&StreamPosition>) -> DecodedServerMessage {
    let since = since.map(|at| BTreeMap::from([(TOPIC.to_owned(), at.clone())]));
    let r#ref = client
        .send(ClientMessage::Subscribe {
            topics: vec![TOPIC.to_owned()],
            since,
        })
        .await;
    let reply = client.wait_op("subscribed").await;
    assert_eq!(reply.r#ref, Some(r#ref));
    reply
}

fn position(reply: &DecodedServerMessage) -> StreamPosition {
    serde_json::from_value(reply.d["positions"][TOPIC].clone()).unwrap()
}

/// The next `n` publications: their `(offset, epoch, d.n)`.
async fn next_publications(client: &mut Client, n: usize) -> Vec<(u64, String, u64)> {
    let mut got = Vec::new();
    while got.len() < n {
        let message = client.wait_op("message_new").await;
        assert_eq!(message.topic.as_deref(), Some(TOPIC));
        got.push((
            message.offset.expect("an offset"),
            message.epoch.clone().expect("an epoch"),
            message.d["n"].as_u64().unwrap(),
        ));
    }
    got
}

async fn ready(gw: &Gateway, encoding: Encoding) -> Client {
    Client::ready(gw, &alice_token(), encoding).await
}

/// The recovery of issue 13 on one gateway: subscribe, read 3, drop, 50 more are
/// published, reconnect with `since` while publications keep coming: every one after
/// the last seen arrives once, in order, the replay first.
async fn drop_and_recover(publisher: &Gateway, subscriber: &Gateway, encoding: Encoding) {
    let mut alice = ready(subscriber, encoding).await;
    let fresh = subscribe(&mut alice, None).await;
    let start = position(&fresh);
    for n in 1..=3 {
        publish(publisher, n).await;
    }
    let seen = next_publications(&mut alice, 3).await;
    assert_eq!(
        seen.iter().map(|p| p.0).collect::<Vec<_>>(),
        [start.offset + 1, start.offset + 2, start.offset + 3]
    );
    let last = StreamPosition {
        offset: seen[2].0,
        epoch: seen[2].1.clone(),
    };
    // A topic never published to has no epoch yet: its first publication makes one.
    if start.offset == 0 {
        assert_eq!(start.epoch, "");
    } else {
        assert_eq!(last.epoch, start.epoch);
    }
    drop(alice);
    for n in 4..=53 {
        publish(publisher, n).await;
    }
    // Publications keep flowing while the client comes back.
    let flowing = {
        let publisher_admin = publisher.admin;
        tokio::spawn(async move {
            for n in 54..=83 {
                let body = json!({"topic": TOPIC, "op": "message_new", "d": {"n": n}});
                let (status, _) =
                    common::http(publisher_admin, "POST", "/publish", &body.to_string()).await;
                assert_eq!(status, 202);
            }
        })
    };
    let mut alice = ready(subscriber, encoding).await;
    let reply = subscribe(&mut alice, Some(&last)).await;
    assert_eq!(
        reply.d["recovered"],
        json!({ TOPIC: true }),
        "{:?}",
        reply.d
    );
    flowing.await.unwrap();
    let got = next_publications(&mut alice, 80).await;
    let ns: Vec<u64> = got.iter().map(|p| p.2).collect();
    assert_eq!(
        ns,
        (4..=83).collect::<Vec<_>>(),
        "in order, none missed, none twice"
    );
    let offsets: Vec<u64> = got.iter().map(|p| p.0).collect();
    assert_eq!(
        offsets,
        (last.offset + 1..=last.offset + 80).collect::<Vec<_>>()
    );
    assert!(got.iter().all(|p| p.1 == last.epoch));
    alice.expect_silence(Duration::from_millis(300)).await;
    publish(publisher, 84).await;
    assert_eq!(next_publications(&mut alice, 1).await[0].2, 84);
}

#[tokio::test]
async fn the_embedded_bus_recovers_everything_missed_in_both_encodings() {
    let gw = Gateway::start(&["--history", "channel:=200/24h"]);
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        drop_and_recover(&gw, &gw, encoding).await;
    }
}

#[tokio::test]
async fn through_redis_across_two_nodes_everything_missed_is_recovered() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args = ["--redis-url", url.as_str(), "--history", "channel:=200/24h"];
    let a = Gateway::start(&args);
    let b = Gateway::start(&args);
    a.wait_ready_status(200, Duration::from_secs(10)).await;
    b.wait_ready_status(200, Duration::from_secs(10)).await;
    // Published on one node, subscribed on the other.
    drop_and_recover(&a, &b, Encoding::Json).await;
    drop_and_recover(&b, &b, Encoding::MsgPack).await;
}

#[tokio::test]
async fn a_gap_beyond_the_size_is_not_recovered_and_says_where_to_continue() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let embedded = Gateway::start(&["--history", "channel:=10/24h"]);
    let with_redis = Gateway::start(&["--redis-url", url.as_str(), "--history", "channel:=10/24h"]);
    with_redis
        .wait_ready_status(200, Duration::from_secs(10))
        .await;
    // The in-memory ring and the Redis stream (`XADD MAXLEN`) keep the same 10.
    for gw in [&embedded, &with_redis] {
        let mut alice = ready(gw, Encoding::Json).await;
        subscribe(&mut alice, None).await;
        for n in 1..=3 {
            publish(gw, n).await;
        }
        let seen = next_publications(&mut alice, 3).await;
        drop(alice);
        for n in 4..=50 {
            publish(gw, n).await;
        }
        let mut alice = ready(gw, Encoding::Json).await;
        let since = StreamPosition {
            offset: seen[2].0,
            epoch: seen[2].1.clone(),
        };
        let reply = subscribe(&mut alice, Some(&since)).await;
        assert_eq!(reply.d["recovered"], json!({ TOPIC: false }));
        assert_eq!(
            position(&reply),
            StreamPosition {
                offset: 50,
                epoch: since.epoch.clone()
            }
        );
        // Nothing replayed: the next publication is the next live one.
        publish(gw, 51).await;
        assert_eq!(next_publications(&mut alice, 1).await[0].2, 51);
        // Within the last 10, the same stream recovers.
        drop(alice);
        let mut alice = ready(gw, Encoding::Json).await;
        let recent = StreamPosition {
            offset: 45,
            epoch: since.epoch,
        };
        let reply = subscribe(&mut alice, Some(&recent)).await;
        assert_eq!(reply.d["recovered"], json!({ TOPIC: true }));
        let ns: Vec<u64> = next_publications(&mut alice, 6)
            .await
            .iter()
            .map(|p| p.2)
            .collect();
        assert_eq!(ns, [46, 47, 48, 49, 50, 51]);
    }
}

#[tokio::test]
async fn a_redis_that_lost_the_functions_gets_them_again() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let gw = Gateway::start(&["--redis-url", url.as_str(), "--history", "channel:=200/24h"]);
    gw.wait_ready_status(200, Duration::from_secs(10)).await;
    let mut alice = ready(&gw, Encoding::Json).await;
    subscribe(&mut alice, None).await;
    publish(&gw, 1).await;
    assert_eq!(next_publications(&mut alice, 1).await[0].0, 1);
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    // A read finds the library gone, loads it and reads again: the stream is intact.
    let reply = subscribe(&mut alice, None).await;
    assert_eq!(position(&reply).offset, 1);
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    // A publication that finds it gone is lost (counted) and the link reconnects, which
    // loads it again: publications go on with their positions.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut n = 2;
    loop {
        publish(&gw, n).await;
        let next = alice.wait_op("message_new");
        if let Ok(message) = tokio::time::timeout(Duration::from_millis(200), next).await {
            assert_eq!(message.d["n"].as_u64(), Some(n));
            assert!(message.offset.is_some_and(|o| o >= 2), "{message:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never published again"
        );
        n += 1;
    }
}

#[tokio::test]
async fn a_redis_restarted_empty_starts_a_new_epoch_and_nothing_is_recovered() {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let gw = Gateway::start(&["--redis-url", url.as_str(), "--history", "channel:=200/24h"]);
    gw.wait_ready_status(200, Duration::from_secs(10)).await;
    let mut alice = ready(&gw, Encoding::Json).await;
    subscribe(&mut alice, None).await;
    publish(&gw, 1).await;
    publish(&gw, 2).await;
    let seen = next_publications(&mut alice, 2).await;
    drop(alice);
    redis.restart().await;
    gw.wait_ready_status(503, Duration::from_secs(10)).await;
    gw.wait_ready_status(200, Duration::from_secs(10)).await;
    // The functions were loaded again with the reconnection: publishing works.
    publish(&gw, 3).await;
    let mut alice = ready(&gw, Encoding::Json).await;
    let since = StreamPosition {
        offset: seen[1].0,
        epoch: seen[1].1.clone(),
    };
    let reply = subscribe(&mut alice, Some(&since)).await;
    assert_eq!(reply.d["recovered"], json!({ TOPIC: false }));
    let now = position(&reply);
    assert_ne!(now.epoch, since.epoch, "a new epoch");
    assert_eq!(now.offset, 1, "the first publication of the new epoch");
}

#[tokio::test]
async fn a_backend_publishes_with_history_by_calling_the_function_itself() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let gw = Gateway::start(&["--redis-url", url.as_str(), "--history", "channel:=200/24h"]);
    gw.wait_ready_status(200, Duration::from_secs(10)).await;
    let mut alice = ready(&gw, Encoding::Json).await;
    let start = position(&subscribe(&mut alice, None).await);
    assert_eq!(
        (start.offset, start.epoch.as_str()),
        (0, ""),
        "nothing published yet"
    );
    let mut conn = redis.conn().await;
    // Subscribing (a read) makes nothing in Redis: made-up topics cost no memory.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*history*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    let fcall = |payload: Value| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("FCALL")
                .arg("coregate_publish")
                .arg(1)
                .arg(TOPIC)
                .arg(payload.to_string())
                .query_async::<Option<u64>>(&mut conn)
                .await
        }
    };
    // Big integers pass through exactly: the function never re-encodes the payload.
    let offset =
        fcall(json!({"op": "message_new", "d": {"n": 1, "id": 1_234_567_890_123_456_789_u64}}))
            .await
            .unwrap();
    assert_eq!(offset, Some(1));
    let message = alice.wait_op("message_new").await;
    assert_eq!(message.offset, offset);
    assert!(message.epoch.as_ref().is_some_and(|e| !e.is_empty()));
    assert_eq!(message.d["id"], 1_234_567_890_123_456_789_u64);
    // Not an envelope: refused, nothing stored or published.
    let refused = fcall(json!(["not", "an", "object"])).await;
    assert!(refused
        .unwrap_err()
        .to_string()
        .contains("JSON object with an op"));
    // A topic without history is published plainly: no offset.
    let plain = redis::cmd("FCALL")
        .arg("coregate_publish")
        .arg(1)
        .arg("server:1")
        .arg(r#"{"op":"x"}"#)
        .query_async::<Option<u64>>(&mut conn)
        .await
        .unwrap();
    assert_eq!(plain, None);
    // A plain PUBLISH to a history topic still arrives, without a position, counted.
    redis
        .publish(TOPIC, br#"{"op":"message_new","d":{"n":2}}"#)
        .await;
    let message = alice.wait_op("message_new").await;
    assert_eq!((message.offset, message.d["n"].as_u64()), (None, Some(2)));
    assert_eq!(
        gw.metric("coregate_history_publications_without_offset_total")
            .await,
        1.0
    );
}

#[tokio::test]
async fn history_answers_the_latest_publications_or_pages_from_since() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let embedded = Gateway::start(&["--history", "channel:=20/24h"]);
    let with_redis = Gateway::start(&["--redis-url", url.as_str(), "--history", "channel:=20/24h"]);
    with_redis
        .wait_ready_status(200, Duration::from_secs(10))
        .await;
    for gw in [&embedded, &with_redis] {
        for n in 1..=30 {
            publish(gw, n).await;
        }
        let mut alice = ready(gw, Encoding::Json).await;
        let history = |limit: Option<u64>, since: Option<StreamPosition>| ClientMessage::History {
            topic: TOPIC.to_owned(),
            limit,
            since,
        };
        let r#ref = alice.send(history(Some(5), None)).await;
        let reply = alice.wait_op("history").await;
        assert_eq!(reply.r#ref, Some(r#ref));
        let ns = |reply: &DecodedServerMessage| -> Vec<u64> {
            reply.d["publications"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["d"]["n"].as_u64().unwrap())
                .collect()
        };
        assert_eq!(ns(&reply), [26, 27, 28, 29, 30]);
        let epoch = reply.d["epoch"].as_str().unwrap().to_owned();
        let offset = reply.d["offset"].as_u64().unwrap();
        // Only 20 are kept: the oldest held is the 11th.
        alice.send(history(None, None)).await;
        assert_eq!(
            ns(&alice.wait_op("history").await),
            (11..=30).collect::<Vec<_>>()
        );
        let since = StreamPosition {
            offset: offset - 10,
            epoch,
        };
        alice.send(history(Some(3), Some(since))).await;
        assert_eq!(ns(&alice.wait_op("history").await), [21, 22, 23]);
        alice.send(history(Some(21), None)).await;
        assert_eq!(alice.wait_op("error").await.d["code"], "limit");
    }
}
