//! Routing, interest and membership across connections, through the harness.
#![allow(clippy::unwrap_used)]

use coregate_protocol::{ClientEnvelope, ClientMessage, Encoding};

use crate::authorizer::MembershipCheck;
use crate::bus::{
    IngestorCommand, InterestChange, PresenceAnswer, PresenceSignal, TypingAction, TypingSignal,
};
use crate::config::ShardConfig;
use crate::testing::Harness;

const JSON: Encoding = Encoding::Json;

fn subscribe(topic: &str, r#ref: u64) -> String {
    format!(r#"{{"op":"subscribe","d":{{"topics":["{topic}"]}},"ref":{ref}}}"#)
}

fn subscribe_message(topic: &str) -> ClientEnvelope {
    ClientEnvelope {
        message: ClientMessage::Subscribe {
            topics: vec![topic.to_owned()],
            since: None,
        },
        r#ref: Some(1),
    }
}

/// Interest changes as `(topic, encoding, change)`.
fn interest(commands: Vec<IngestorCommand>) -> Vec<(String, Encoding, InterestChange)> {
    commands
        .into_iter()
        .filter_map(|command| match command {
            IngestorCommand::Interest {
                topic,
                encoding,
                change,
                ..
            } => Some((topic.as_str().to_owned(), encoding, change)),
            IngestorCommand::Publish(_)
            | IngestorCommand::Typing(_)
            | IngestorCommand::Presence(_)
            | IngestorCommand::History(_) => None,
        })
        .collect()
}

#[test]
fn interest_is_told_at_the_first_and_last_subscriber_per_encoding() {
    let mut h = Harness::new(ShardConfig::default());
    let a = h.connect_ready("alice", JSON);
    let b = h.connect_ready("bob", JSON);
    h.ingestor_commands();
    h.send(a, &subscribe("channel:1", 1));
    h.send(b, &subscribe("channel:1", 1));
    assert_eq!(
        interest(h.ingestor_commands()),
        [("channel:1".into(), JSON, InterestChange::Gained)]
    );
    h.hub.remove(a);
    assert!(interest(h.ingestor_commands())
        .iter()
        .all(|(topic, _, _)| topic != "channel:1"));
    h.send(b, r#"{"op":"unsubscribe","d":{"topics":["channel:1"]}}"#);
    assert_eq!(
        interest(h.ingestor_commands()),
        [("channel:1".into(), JSON, InterestChange::Lost)]
    );
}

#[test]
fn a_publication_reaches_every_subscriber_but_the_excluded_user() {
    let mut h = Harness::new(ShardConfig::default());
    let a = h.connect_ready("alice", JSON);
    let b = h.connect_ready("bob", Encoding::MsgPack);
    for c in [a, b] {
        h.send_message(c, subscribe_message("channel:1"));
        assert_eq!(h.read(c).count("subscribed"), 1);
    }
    // Typing from alice goes to the node's typing table, whose announcement excludes
    // alice.
    h.send(a, r#"{"op":"typing_start","d":{"topic":"channel:1"}}"#);
    let publications: Vec<_> = typing(h.ingestor_commands())
        .iter()
        .map(TypingSignal::announcement)
        .collect();
    assert_eq!(publications.len(), 1);
    assert_eq!(publications[0].exclude_user(), Some("alice"));
    let delivery = std::sync::Arc::new(crate::bus::SharedDelivery::new(
        publications[0].clone(),
        h.now().instant,
    ));
    h.hub.route(delivery, h.now().instant);
    assert_eq!(h.read(a).messages.len(), 0, "the typist is excluded");
    let read = h.read(b);
    assert_eq!(read.ops(), ["typing_start"]);
    assert_eq!(read.first("typing_start")["d"]["user_id"], "alice");
    assert_eq!(read.first("typing_start")["topic"], "channel:1");
}

/// Typing signals sent to the ingestor.
fn typing(commands: Vec<IngestorCommand>) -> Vec<TypingSignal> {
    commands
        .into_iter()
        .filter_map(|command| match command {
            IngestorCommand::Typing(signal) => Some(signal),
            _ => None,
        })
        .collect()
}

/// `(topic, action)` of each typing signal.
fn typing_actions(commands: Vec<IngestorCommand>) -> Vec<(String, TypingAction)> {
    typing(commands)
        .into_iter()
        .map(|s| (s.topic.as_str().to_owned(), s.action))
        .collect()
}

#[test]
fn typing_signals_carry_the_user_and_the_close_stops_every_open_indicator() {
    let mut h = Harness::new(ShardConfig::default());
    let a = h.connect_subscribed("alice", "channel:1");
    h.send(a, &subscribe("channel:2", 2));
    h.send(a, &subscribe("channel:3", 3));
    h.ingestor_commands();
    h.send(a, r#"{"op":"typing_start","d":{"topic":"channel:1"}}"#);
    h.send(a, r#"{"op":"typing_start","d":{"topic":"channel:2"}}"#);
    h.send(a, r#"{"op":"typing_start","d":{"topic":"channel:3"}}"#);
    h.send(a, r#"{"op":"typing_stop","d":{"topic":"channel:3"}}"#);
    let signals = typing(h.ingestor_commands());
    assert_eq!(signals.len(), 4);
    assert!(signals.iter().all(|s| s.user_id == "alice"));
    assert_eq!(
        h.hub.session(a).map(|s| s.typing_topics().len()),
        Some(2),
        "channel:1 and channel:2 are open"
    );
    h.hub.remove(a);
    let mut stops = typing_actions(h.ingestor_commands());
    stops.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        stops,
        [
            ("channel:1".into(), TypingAction::Stop),
            ("channel:2".into(), TypingAction::Stop)
        ],
        "the close stops what was open, and only that"
    );
}

#[test]
fn unsubscribing_stops_the_indicator_and_a_stop_is_sent_even_if_another_connection_started() {
    let mut h = Harness::new(ShardConfig::default());
    let a = h.connect_subscribed("alice", "channel:1");
    h.ingestor_commands();
    h.send(a, r#"{"op":"typing_start","d":{"topic":"channel:1"}}"#);
    h.send(a, r#"{"op":"unsubscribe","d":{"topics":["channel:1"]}}"#);
    assert_eq!(
        typing_actions(h.ingestor_commands()),
        [
            ("channel:1".into(), TypingAction::Start),
            ("channel:1".into(), TypingAction::Stop)
        ]
    );
    h.hub.remove(a);
    assert_eq!(typing_actions(h.ingestor_commands()), []);
    // A second tab that never started still stops the user's indicator.
    let b = h.connect_subscribed("alice", "channel:1");
    h.ingestor_commands();
    h.send(b, r#"{"op":"typing_stop","d":{"topic":"channel:1"}}"#);
    assert_eq!(
        typing_actions(h.ingestor_commands()),
        [("channel:1".into(), TypingAction::Stop)]
    );
    h.hub.remove(b);
    assert_eq!(typing_actions(h.ingestor_commands()), [], "nothing open");
}

#[test]
fn typing_needs_a_subscription() {
    let mut h = Harness::new(ShardConfig::default());
    let a = h.connect_ready("alice", JSON);
    h.read(a);
    h.send(a, r#"{"op":"typing_start","d":{"topic":"channel:1"}}"#);
    assert_eq!(h.read(a).first("error")["d"]["code"], "forbidden");
}

/// Answers the next membership question with `allowed` for every topic.
fn answer_next(h: &Harness, allowed: bool) -> Vec<String> {
    let check: MembershipCheck = h.checks.as_ref().unwrap().try_recv().unwrap();
    let topics = check.topics.iter().map(|t| t.as_str().to_owned()).collect();
    check
        .reply
        .send(Ok(vec![allowed; check.topics.len()]))
        .unwrap();
    topics
}

/// The membership answer the driver would hand the hub for `wait`.
fn finish(h: &mut Harness, wait: crate::hub::MembershipWait) {
    let answer = wait.answer.try_recv().unwrap();
    let now = h.now().instant;
    h.hub.finish_check(wait.check_id, answer, now);
}

#[test]
fn membership_is_asked_once_then_cached() {
    let mut h = Harness::with_membership(ShardConfig::default());
    let a = h.connect_ready("alice", JSON);
    h.read(a);
    h.send(a, &subscribe("channel:1", 1));
    assert!(h.read(a).messages.is_empty(), "waiting for the verdict");
    let waits = h.hub.take_membership_waits();
    assert_eq!(answer_next(&h, true), ["channel:1"]);
    for wait in waits {
        finish(&mut h, wait);
    }
    let read = h.read(a);
    assert_eq!(read.first("subscribed")["d"]["topics"][0], "channel:1");
    assert_eq!(read.first("subscribed")["ref"], 1);
    // A second connection of alice's is answered from the shard's cache.
    let b = h.connect_ready("alice", JSON);
    h.read(b);
    h.send(b, &subscribe("channel:1", 2));
    assert!(h.hub.take_membership_waits().is_empty());
    assert_eq!(h.read(b).count("subscribed"), 1);
}

#[test]
fn an_unsubscribe_sent_while_membership_is_checked_wins_over_the_late_answer() {
    let mut h = Harness::with_membership(ShardConfig::default());
    let a = h.connect_ready("alice", JSON);
    h.read(a);
    h.send(a, &subscribe("channel:1", 1));
    h.send(
        a,
        r#"{"op":"unsubscribe","d":{"topics":["channel:1"]},"ref":2}"#,
    );
    let waits = h.hub.take_membership_waits();
    answer_next(&h, true);
    for wait in waits {
        finish(&mut h, wait);
    }
    assert!(!h
        .hub
        .session(a)
        .unwrap()
        .subscriptions()
        .iter()
        .any(|t| t.as_str() == "channel:1"));
}

#[test]
fn a_new_connection_on_a_reused_slot_inherits_nothing_of_the_old_one() {
    let mut h = Harness::with_membership(ShardConfig::default());
    let old = h.connect_ready("alice", JSON);
    h.send(old, &subscribe("channel:1", 1));
    let old_waits = h.hub.take_membership_waits();
    h.hub.remove(old);
    let new = h.connect_ready("bob", JSON);
    assert_ne!(new, old);
    assert!(
        h.hub.session(old).is_none(),
        "the old key no longer reaches anything"
    );
    h.read(new);
    h.send(new, &subscribe("channel:2", 5));
    h.send(
        new,
        r#"{"op":"unsubscribe","d":{"topics":["channel:2"]},"ref":6}"#,
    );
    h.send(new, &subscribe("channel:3", 7));
    let new_waits = h.hub.take_membership_waits();
    // The old connection's answer comes first: it must not touch the new one.
    answer_next(&h, true);
    for wait in old_waits {
        finish(&mut h, wait);
    }
    let read = h.read(new);
    assert_eq!(read.ops(), ["unsubscribed"]);
    answer_next(&h, true);
    answer_next(&h, true);
    for wait in new_waits {
        finish(&mut h, wait);
    }
    let topics: Vec<&str> = h
        .hub
        .session(new)
        .unwrap()
        .subscriptions()
        .iter()
        .map(|t| t.as_str())
        .collect();
    assert_eq!(topics, ["user:bob", "global", "channel:3"]);
    let read = h.read(new);
    let granted: Vec<&serde_json::Value> = read
        .messages
        .iter()
        .filter(|(op, _)| op == "subscribed")
        .flat_map(|(_, m)| m["d"]["topics"].as_array().unwrap())
        .collect();
    assert_eq!(
        granted,
        ["channel:3"],
        "channel:2 was unsubscribed meanwhile"
    );
}

#[test]
fn a_membership_check_that_fails_refuses_not_ready() {
    let mut h = Harness::with_membership(ShardConfig::default());
    let a = h.connect_ready("alice", JSON);
    h.read(a);
    h.send(a, &subscribe("channel:1", 1));
    let wait = h.hub.take_membership_waits().pop().unwrap();
    let now = h.now().instant;
    h.hub.finish_check(
        wait.check_id,
        Err(crate::authorizer::MembershipError::TimedOut(wait.timeout)),
        now,
    );
    let read = h.read(a);
    assert_eq!(read.first("error")["d"]["code"], "not_ready");
    assert_eq!(read.first("error")["d"]["topics"][0], "channel:1");
}

#[test]
fn drain_closes_with_reconnect_and_1012() {
    let mut h = Harness::new(ShardConfig::default());
    let a = h.connect_ready("alice", JSON);
    h.read(a);
    for key in h.hub.keys() {
        let now = h.now().instant;
        h.hub.close(key, crate::session::CloseReason::Drain, now);
    }
    let read = h.read(a);
    assert_eq!(read.ops(), ["reconnect"]);
    assert_eq!(read.close, Some(1012));
}

/// Presence signals sent to the ingestor.
fn presence(commands: Vec<IngestorCommand>) -> Vec<PresenceSignal> {
    commands
        .into_iter()
        .filter_map(|command| match command {
            IngestorCommand::Presence(signal) => Some(signal),
            _ => None,
        })
        .collect()
}

#[test]
fn a_ready_connection_counts_once_for_presence_and_its_end_uncounts_it() {
    let mut h = Harness::new(ShardConfig::default());
    let a = h.connect_ready("alice", JSON);
    assert_eq!(
        presence(h.ingestor_commands()),
        [PresenceSignal::Connect {
            user_id: "alice".into(),
            topics: vec![coregate_protocol::Topic::parse("presence:alice").unwrap()],
        }]
    );
    // A connection that never became ready was never counted, and is not uncounted.
    let anonymous = h.connect(JSON);
    h.hub.remove(anonymous);
    assert_eq!(presence(h.ingestor_commands()), []);
    h.hub.remove(a);
    assert_eq!(
        presence(h.ingestor_commands()),
        [PresenceSignal::Disconnect {
            user_id: "alice".into()
        }]
    );
    // Removing it twice sends nothing more.
    h.hub.remove(a);
    assert_eq!(presence(h.ingestor_commands()), []);
}

#[test]
fn identify_in_band_counts_the_connection_too() {
    let mut h = Harness::new(ShardConfig::default());
    let a = h.connect(JSON);
    h.send(a, r#"{"op":"identify","d":{"token":"bob"},"ref":1}"#);
    assert_eq!(h.read(a).ops(), ["hello", "ready"]);
    assert!(matches!(
        &presence(h.ingestor_commands())[..],
        [PresenceSignal::Connect { user_id, .. }] if user_id == "bob"
    ));
}

#[test]
fn presence_set_is_handed_to_the_node_and_offline_is_refused() {
    let mut h = Harness::new(ShardConfig::default());
    let a = h.connect_ready("alice", JSON);
    h.read(a);
    h.ingestor_commands();
    h.send(a, r#"{"op":"presence_set","d":{"status":"away"},"ref":2}"#);
    assert_eq!(
        presence(h.ingestor_commands()),
        [PresenceSignal::Set {
            user_id: "alice".into(),
            status: coregate_protocol::PresenceStatus::Away
        }]
    );
    assert!(h.read(a).ops().is_empty(), "presence_set has no reply");
    h.send(
        a,
        r#"{"op":"presence_set","d":{"status":"offline"},"ref":3}"#,
    );
    assert_eq!(presence(h.ingestor_commands()), []);
    let read = h.read(a);
    assert_eq!(read.first("error")["d"]["code"], "bad_request");
    assert_eq!(read.first("error")["ref"], 3);
}

#[test]
fn presence_query_goes_to_the_node_and_its_answer_to_that_connection_only() {
    let mut h = Harness::new(ShardConfig::default());
    let a = h.connect_ready("alice", JSON);
    h.read(a);
    h.ingestor_commands();
    h.send(
        a,
        r#"{"op":"presence_query","d":{"user_ids":["bob","carol"]},"ref":7}"#,
    );
    let [PresenceSignal::Query {
        shard_id,
        conn,
        r#ref,
        viewer,
        user_ids,
    }] = &presence(h.ingestor_commands())[..]
    else {
        panic!("one query expected");
    };
    assert_eq!((*shard_id, *conn, *r#ref), (0, a, Some(7)));
    assert_eq!(viewer, "alice");
    assert_eq!(user_ids, &["bob".to_owned(), "carol".to_owned()]);
    let users = vec![coregate_protocol::PresenceEntry {
        user_id: "bob".into(),
        status: coregate_protocol::PresenceStatus::Busy,
        since: 5,
    }];
    h.hub.answer_presence_query(
        a,
        Some(7),
        PresenceAnswer::Users(users.clone()),
        h.now().instant,
    );
    let read = h.read(a);
    assert_eq!(read.ops(), ["presence_state"]);
    assert_eq!(read.first("presence_state")["ref"], 7);
    assert_eq!(
        read.first("presence_state")["d"]["users"][0]["status"],
        "busy"
    );
    assert_eq!(read.first("presence_state")["d"]["users"][0]["since"], 5);
    // A node that could not read the presence state (Redis unreachable): `not_ready`.
    h.send(
        a,
        r#"{"op":"presence_query","d":{"user_ids":["bob"]},"ref":8}"#,
    );
    h.hub
        .answer_presence_query(a, Some(8), PresenceAnswer::NotReady, h.now().instant);
    let read = h.read(a);
    assert_eq!(read.first("error")["d"]["code"], "not_ready");
    assert_eq!(read.first("error")["ref"], 8);
    // A node whose presence is off (`--presence false`): `unavailable`.
    h.send(
        a,
        r#"{"op":"presence_query","d":{"user_ids":["bob"]},"ref":9}"#,
    );
    h.hub
        .answer_presence_query(a, Some(9), PresenceAnswer::Disabled, h.now().instant);
    let read = h.read(a);
    assert_eq!(read.first("error")["d"]["code"], "unavailable");
    assert_eq!(read.first("error")["ref"], 9);
    // A late answer for a connection that is gone reaches nobody (nor a newcomer).
    h.hub.remove(a);
    let b = h.connect_ready("bob", JSON);
    h.read(b);
    h.hub
        .answer_presence_query(a, Some(7), PresenceAnswer::Users(users), h.now().instant);
    assert!(h.read(b).ops().is_empty());
}

#[test]
fn presence_query_over_the_limit_is_refused() {
    let mut h = Harness::new(ShardConfig::default());
    let a = h.connect_ready("alice", JSON);
    h.read(a);
    h.ingestor_commands();
    let ids: Vec<String> = (0..=coregate_protocol::MAX_PRESENCE_QUERY_USERS)
        .map(|i| format!("\"u{i}\""))
        .collect();
    h.send(
        a,
        &format!(
            r#"{{"op":"presence_query","d":{{"user_ids":[{}]}},"ref":9}}"#,
            ids.join(",")
        ),
    );
    assert_eq!(presence(h.ingestor_commands()), []);
    let read = h.read(a);
    assert_eq!(read.first("error")["d"]["code"], "limit");
    assert_eq!(read.first("error")["ref"], 9);
}

#[test]
fn rpc_goes_to_the_backend_and_its_answer_to_that_connection_with_the_ref() {
    let mut h = Harness::new(ShardConfig::default());
    let a = h.connect_ready("alice", JSON);
    h.read(a);
    h.send(
        a,
        r#"{"op":"rpc","d":{"method":"send_message","d":{"text":"hi","client_message_id":"c1"}},"ref":5}"#,
    );
    let call = h.rpc_calls.try_recv().expect("one call");
    assert_eq!((call.shard_id, call.conn, call.r#ref), (0, a, Some(5)));
    assert_eq!(call.user_id, "alice");
    assert_eq!(call.method, "send_message");
    assert_eq!(
        call.d,
        serde_json::json!({"text": "hi", "client_message_id": "c1"})
    );
    assert!(
        h.read(a).ops().is_empty(),
        "nothing until the backend answers"
    );
    h.hub.answer_rpc(
        a,
        Some(5),
        Ok(serde_json::json!({"id": "m1"})),
        h.now().instant,
    );
    let read = h.read(a);
    assert_eq!(read.ops(), ["rpc_result"]);
    assert_eq!(read.first("rpc_result")["ref"], 5);
    // `rpc_result {d}`: the backend's answer is the payload's `d`.
    assert_eq!(
        read.first("rpc_result")["d"]["d"],
        serde_json::json!({"id": "m1"})
    );
    // The backend's own error code passes through.
    h.send(a, r#"{"op":"rpc","d":{"method":"m"},"ref":6}"#);
    let call = h.rpc_calls.try_recv().expect("one call");
    assert_eq!(call.d, serde_json::Value::Null, "no d: null");
    let failure = crate::backend::RpcFailure {
        code: "message_too_long".into(),
        message: "at most 2000 characters".into(),
    };
    h.hub.answer_rpc(a, Some(6), Err(failure), h.now().instant);
    let read = h.read(a);
    assert_eq!(read.first("error")["ref"], 6);
    assert_eq!(read.first("error")["d"]["code"], "message_too_long");
    assert_eq!(
        read.first("error")["d"]["message"],
        "at most 2000 characters"
    );
}

#[test]
fn rpc_in_flight_is_capped_per_connection_and_an_answer_frees_a_place() {
    let config = ShardConfig {
        rpc_max_in_flight: 2,
        ..ShardConfig::default()
    };
    let mut h = Harness::new(config);
    let a = h.connect_ready("alice", JSON);
    h.read(a);
    for r in 1..=3 {
        h.send(
            a,
            &format!(r#"{{"op":"rpc","d":{{"method":"m"}},"ref":{r}}}"#),
        );
    }
    assert_eq!(h.rpc_calls.len(), 2);
    let read = h.read(a);
    assert_eq!(read.first("error")["ref"], 3);
    assert_eq!(read.first("error")["d"]["code"], "limit");
    h.hub
        .answer_rpc(a, Some(1), Ok(serde_json::json!(1)), h.now().instant);
    h.send(a, r#"{"op":"rpc","d":{"method":"m"},"ref":4}"#);
    assert_eq!(h.rpc_calls.len(), 3);
    assert_eq!(h.read(a).ops(), ["rpc_result"]);
}

#[test]
fn rpc_answers_that_no_longer_fit_the_replies_room_are_refused_limit_not_closed() {
    let mut h = Harness::new(ShardConfig::default());
    let a = h.connect_ready("alice", JSON);
    h.read(a);
    for r in 1..=4 {
        h.send(
            a,
            &format!(r#"{{"op":"rpc","d":{{"method":"m"}},"ref":{r}}}"#),
        );
    }
    assert_eq!(h.rpc_calls.drain().count(), 4);
    // Four ~20 KiB answers before the client reads: 64 KiB hold three.
    let big = serde_json::json!({ "text": "x".repeat(20_000) });
    for r in 1..=4 {
        h.hub
            .answer_rpc(a, Some(r), Ok(big.clone()), h.now().instant);
    }
    assert!(!h.is_closing(a));
    let read = h.read(a);
    assert_eq!(
        read.ops(),
        ["rpc_result", "rpc_result", "rpc_result", "error"]
    );
    assert_eq!(read.first("error")["ref"], 4);
    assert_eq!(read.first("error")["d"]["code"], "limit");
    // Every place was given back: four more calls go out.
    for r in 5..=8 {
        h.send(
            a,
            &format!(r#"{{"op":"rpc","d":{{"method":"m"}},"ref":{r}}}"#),
        );
    }
    assert_eq!(h.rpc_calls.len(), 4);
    assert!(h.read(a).ops().is_empty(), "no refusal");
}

#[test]
fn rpc_that_cannot_reach_the_backend_queue_is_answered_unavailable_at_once() {
    let config = ShardConfig {
        rpc_max_in_flight: 100,
        ..ShardConfig::default()
    };
    let mut h = Harness::new(config);
    let a = h.connect_ready("alice", JSON);
    h.read(a);
    for r in 0..=crate::testing::RPC_QUEUE as u64 {
        h.send(
            a,
            &format!(r#"{{"op":"rpc","d":{{"method":"m"}},"ref":{r}}}"#),
        );
    }
    assert_eq!(h.rpc_calls.len(), crate::testing::RPC_QUEUE);
    assert_eq!(h.stats.snapshot().backend_calls_refused, 1);
    let read = h.read(a);
    assert_eq!(read.first("error")["d"]["code"], "unavailable");
    assert_eq!(read.first("error")["ref"], crate::testing::RPC_QUEUE as u64);
}

#[test]
fn a_late_rpc_answer_reaches_nobody_once_its_connection_is_gone() {
    let mut h = Harness::new(ShardConfig::default());
    let a = h.connect_ready("alice", JSON);
    h.read(a);
    h.send(a, r#"{"op":"rpc","d":{"method":"m"},"ref":1}"#);
    h.hub.remove(a);
    let b = h.connect_ready("bob", JSON);
    h.read(b);
    h.hub
        .answer_rpc(a, Some(1), Ok(serde_json::json!(1)), h.now().instant);
    assert!(h.read(b).ops().is_empty());
}

#[test]
fn an_rpc_flood_is_refused_by_the_rate_limit_before_it_reaches_the_backend() {
    let config = ShardConfig {
        rate_limit_burst: 3,
        rpc_max_in_flight: 1000,
        ..ShardConfig::default()
    };
    let mut h = Harness::new(config);
    let a = h.connect_ready("alice", JSON);
    h.read(a);
    let mut sent = 0;
    for r in 0..10 {
        h.send(
            a,
            &format!(r#"{{"op":"rpc","d":{{"method":"m"}},"ref":{r}}}"#),
        );
        while h.rpc_calls.try_recv().is_ok() {
            sent += 1;
        }
    }
    assert_eq!(sent, 3, "only the burst reaches the backend");
    let read = h.read(a);
    assert_eq!(read.first("error")["d"]["code"], "rate_limited");
}

#[test]
fn a_parked_connection_is_asked_for_once_when_something_is_queued_for_it() {
    let mut h = Harness::new(ShardConfig::default());
    let (requests, unparks) = flume::unbounded();
    h.hub.set_unpark_requests(requests);
    let parked = h.connect_subscribed("alice", "channel:1");
    let other = h.connect_subscribed("bob", "channel:2");
    h.hub.park(parked);
    h.hub.park(other);
    h.publish("channel:1", "message", serde_json::json!({"n": 1}));
    h.publish("channel:1", "message", serde_json::json!({"n": 2}));
    assert_eq!(
        unparks.try_iter().collect::<Vec<_>>(),
        [parked.to_raw()],
        "once, and only the subscriber"
    );
    // Resumed: its task's waker is registered again; parked again, asked for again.
    h.hub.register_waker(parked, std::task::Waker::noop());
    h.publish("channel:1", "message", serde_json::json!({"n": 3}));
    assert!(
        unparks.try_iter().next().is_none(),
        "a task is woken instead"
    );
    h.transmit(parked);
    h.hub.park(parked);
    h.hub
        .close(parked, crate::session::CloseReason::Drain, h.now().instant);
    assert_eq!(unparks.try_iter().collect::<Vec<_>>(), [parked.to_raw()]);
}
