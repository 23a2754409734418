//! The connection rules, driven through the harness with literal bytes and a virtual
//! clock: every timeout, limit and close of PROTOCOL.md that concerns one connection.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use coregate_protocol::Encoding;

use super::{PING_BURST, PING_RATE_PER_SEC};
use crate::config::ShardConfig;
use crate::testing::{client_frame, Harness, UNIX_START};

const JSON: Encoding = Encoding::Json;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn subscribe(topic: &str, r#ref: u64) -> String {
    format!(r#"{{"op":"subscribe","d":{{"topics":["{topic}"]}},"ref":{ref}}}"#)
}

#[test]
fn a_connection_that_does_not_identify_is_closed_4009_after_the_identify_timeout() {
    let mut h = Harness::new(ShardConfig::default());
    let c = h.connect(JSON);
    assert_eq!(h.read(c).ops(), ["hello"]);
    assert_eq!(
        h.hub.poll_timeout(),
        Some(h.now().instant + secs(5.0)),
        "the identify deadline is the next one"
    );
    h.advance(secs(4.9));
    assert!(!h.is_closing(c));
    h.advance(secs(0.1));
    let read = h.read(c);
    assert_eq!(read.close, Some(4009));
    assert!(
        read.messages.is_empty(),
        "a client-caused close sends no reconnect"
    );
    assert_eq!(h.stats.snapshot().closes_session_timed_out, 1);
}

#[test]
fn in_band_identify_makes_the_connection_ready_and_echoes_the_ref() {
    let mut h = Harness::new(ShardConfig::default());
    let c = h.connect(JSON);
    h.send(c, r#"{"op":"identify","d":{"token":"alice"},"ref":7}"#);
    let read = h.read(c);
    assert_eq!(read.ops(), ["hello", "ready"]);
    assert_eq!(read.first("ready")["ref"], 7);
    assert_eq!(read.first("ready")["d"]["user_id"], "alice");
    h.advance(secs(10.0));
    assert!(!h.is_closing(c), "no identify timeout once ready");
}

#[test]
fn a_bad_token_in_identify_closes_4004() {
    let mut h = Harness::new(ShardConfig::default());
    let c = h.connect(JSON);
    h.send(c, r#"{"op":"identify","d":{"token":"bad"}}"#);
    assert_eq!(h.read(c).close, Some(4004));
}

#[test]
fn heartbeat_silence_for_twice_the_interval_closes_4009() {
    let mut h = Harness::new(ShardConfig::default());
    let c = h.connect_ready("alice", JSON);
    h.advance(secs(30.0));
    h.send(c, r#"{"op":"ping"}"#);
    assert_eq!(h.read(c).count("pong"), 1);
    h.advance(secs(59.9));
    assert!(!h.is_closing(c), "the ping reset the silence");
    h.advance(secs(0.1));
    assert_eq!(h.read(c).close, Some(4009));
}

#[test]
fn an_op_before_ready_closes_4003_but_ping_is_answered() {
    let mut h = Harness::new(ShardConfig::default());
    let c = h.connect(JSON);
    h.send(c, r#"{"op":"ping","ref":1}"#);
    assert_eq!(h.read(c).ops(), ["hello", "pong"]);
    h.send(c, &subscribe("channel:1", 2));
    let read = h.read(c);
    assert_eq!(read.close, Some(4003));
    assert!(read.messages.is_empty());
}

#[test]
fn an_expired_token_closes_4006_and_refresh_extends_it() {
    let config = ShardConfig {
        heartbeat_interval: Duration::from_secs(3600),
        ..ShardConfig::default()
    };
    let mut h = Harness::new(config);
    let c = h.connect_ready(&format!("alice@{}", UNIX_START + 100), JSON);
    h.read(c);
    h.advance(secs(90.0));
    h.send(
        c,
        &format!(
            r#"{{"op":"refresh","d":{{"token":"bob@{}"}},"ref":1}}"#,
            UNIX_START + 500
        ),
    );
    let refused = h.read(c);
    assert_eq!(
        refused.first("error")["d"]["code"],
        "invalid_token",
        "another user"
    );
    h.send(
        c,
        &format!(
            r#"{{"op":"refresh","d":{{"token":"alice@{}"}},"ref":2}}"#,
            UNIX_START + 200
        ),
    );
    let refreshed = h.read(c);
    assert_eq!(refreshed.first("refreshed")["d"]["exp"], UNIX_START + 200);
    h.advance(secs(60.0));
    assert!(
        !h.is_closing(c),
        "past the first token's exp, within the new one's"
    );
    h.advance(secs(49.0));
    assert!(!h.is_closing(c));
    h.advance(secs(1.0));
    assert_eq!(h.read(c).close, Some(4006));
    assert_eq!(h.stats.snapshot().closes_token_expired, 1);
}

#[test]
fn a_flood_is_answered_rate_limited_then_closed_4008() {
    let config = ShardConfig::default();
    let (burst, flood_after) = (config.rate_limit_burst, config.flood_close_after);
    let mut h = Harness::new(config);
    let c = h.connect_ready("alice", JSON);
    h.read(c);
    let unsubscribe = r#"{"op":"unsubscribe","d":{"topics":["channel:9"]},"ref":3}"#;
    for _ in 0..burst {
        h.send(c, unsubscribe);
    }
    assert_eq!(h.read(c).count("unsubscribed"), burst as usize);
    h.send(c, unsubscribe);
    let limited = h.read(c);
    let error = limited.first("error");
    assert_eq!(error["d"]["code"], "rate_limited");
    assert_eq!(error["ref"], 3);
    assert!(error["d"]["retry_after_ms"].as_u64().unwrap() > 0);
    // Waiting out the rate serves the client again.
    h.advance(secs(0.5));
    h.send(c, unsubscribe);
    assert_eq!(h.read(c).count("unsubscribed"), 1);
    for _ in 0..flood_after {
        h.send(c, unsubscribe);
    }
    let refused = h.read(c);
    assert_eq!(refused.count("error"), flood_after as usize);
    assert_eq!(refused.close, None);
    h.send(c, unsubscribe);
    assert_eq!(h.read(c).close, Some(4008));
}

#[test]
fn pings_have_an_allowance_of_their_own_and_a_ping_flood_is_closed_4008() {
    let config = ShardConfig::default();
    let (burst, flood_after) = (config.rate_limit_burst, config.flood_close_after);
    let mut h = Harness::new(config);
    let c = h.connect_ready("alice", JSON);
    h.read(c);
    // A client busy with events is not refused its pings.
    for _ in 0..=burst {
        h.send(c, r#"{"op":"unsubscribe","d":{"topics":["channel:9"]}}"#);
    }
    assert_eq!(
        h.read(c).count("error"),
        1,
        "the events are over their rate"
    );
    h.send(c, r#"{"op":"ping"}"#);
    assert_eq!(h.read(c).ops(), ["pong"]);
    // Pinging at a steady rate within the allowance goes on for ever.
    for _ in 0..200 {
        h.advance(Duration::from_secs(1) / PING_RATE_PER_SEC);
        h.send(c, r#"{"op":"ping"}"#);
    }
    assert_eq!(h.read(c).count("pong"), 200);
    // A flood after a quiet while: the burst, then refusals, then the close.
    h.advance(secs(10.0));
    let flood: Vec<&str> = vec![r#"{"op":"ping"}"#; (PING_BURST + flood_after + 1) as usize];
    h.send(c, &flood.join("\n"));
    let read = h.read(c);
    assert_eq!(read.count("pong"), PING_BURST as usize);
    assert_eq!(read.count("error"), flood_after as usize);
    assert_eq!(read.first("error")["d"]["code"], "rate_limited");
    assert_eq!(read.close, Some(4008));
}

#[test]
fn a_text_frame_that_is_not_utf8_closes_1007() {
    let mut h = Harness::new(ShardConfig::default());
    let c = h.connect_ready("alice", JSON);
    h.read(c);
    h.input(c, &client_frame(0x1, &[b'{', 0xff, 0xfe, b'}']));
    assert_eq!(h.read(c).close, Some(1007));
    assert_eq!(h.stats.snapshot().closes_protocol_error, 1);
}

#[test]
fn an_unmasked_client_frame_closes_1002() {
    let mut h = Harness::new(ShardConfig::default());
    let c = h.connect_ready("alice", JSON);
    h.read(c);
    h.input(c, b"\x81\x02{}");
    assert_eq!(h.read(c).close, Some(1002));
}

#[test]
fn a_message_over_the_size_limit_closes_1009() {
    let config = ShardConfig {
        max_message_size: 100,
        ..ShardConfig::default()
    };
    let mut h = Harness::new(config);
    let c = h.connect_ready("alice", JSON);
    h.read(c);
    h.input(c, &client_frame(0x1, &[b' '; 101]));
    assert_eq!(h.read(c).close, Some(1009));
}

/// Found by the `websocket_read_path` fuzz target: a frame header over the limit leaves
/// tungstenite's parser mid-frame, and feeding it the rest tripped its
/// `capacity() > len` assertion (debug builds; release would have read nothing).
#[test]
fn input_after_a_frame_over_the_limit_is_discarded() {
    let mut h = Harness::new(ShardConfig::default());
    let c = h.connect_ready("alice", JSON);
    h.read(c);
    // A masked text frame header declaring 1 MiB, over the 64 KiB limit.
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 20).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    h.input(c, &header);
    for _ in 0..4 {
        h.input(c, &[b'x'; 300]);
    }
    h.input(c, &client_frame(0x9, b"ping"));
    let read = h.read(c);
    assert_eq!(read.close, Some(1009));
    assert_eq!(read.pongs, 0, "nothing after the refused frame is handled");
}

#[test]
fn websocket_pings_are_answered_with_pongs() {
    let mut h = Harness::new(ShardConfig::default());
    let c = h.connect_ready("alice", JSON);
    h.read(c);
    h.input(c, &client_frame(0x9, b"hi"));
    assert_eq!(h.read(c).pongs, 1);
}

#[test]
fn the_peer_s_close_is_echoed_and_the_session_is_flushed() {
    let mut h = Harness::new(ShardConfig::default());
    let c = h.connect_ready("alice", JSON);
    h.read(c);
    h.input(c, &client_frame(0x8, &1000u16.to_be_bytes()));
    let session = h.hub.session(c).unwrap();
    assert!(session.peer_closed() && session.is_closing());
    assert_eq!(h.read(c).close, Some(1000), "tungstenite echoes the close");
    assert!(h.hub.session(c).unwrap().is_flushed());
    assert_eq!(h.stats.snapshot().server_closes, 0, "the client closed");
}

/// Budget 2,000 bytes: events of ~550 bytes, so that three fit and a fourth goes over.
fn slow_reader_config() -> ShardConfig {
    ShardConfig {
        outbound_budget: 2_000,
        slow_client_grace: Duration::from_secs(5),
        ..ShardConfig::default()
    }
}

fn big_event() -> serde_json::Value {
    serde_json::json!({ "text": "x".repeat(500) })
}

#[test]
fn a_slow_reader_loses_typing_first_then_gets_reconnect_and_4010_after_the_grace() {
    let mut h = Harness::new(slow_reader_config());
    let c = h.connect_ready("alice", JSON);
    h.send(c, &subscribe("channel:1", 1));
    assert_eq!(h.read(c).count("subscribed"), 1);
    h.publish(
        "channel:1",
        "typing_start",
        serde_json::json!({ "user_id": "bob" }),
    );
    for _ in 0..3 {
        h.publish("channel:1", "message_new", big_event());
    }
    assert_eq!(h.stats.snapshot().shed_events, 0, "within budget");
    h.publish("channel:1", "message_new", big_event());
    assert_eq!(
        h.stats.snapshot().shed_events,
        1,
        "typing shed to make room"
    );
    h.publish(
        "channel:1",
        "typing_start",
        serde_json::json!({ "user_id": "bob" }),
    );
    assert_eq!(
        h.stats.snapshot().shed_events,
        2,
        "typing refused while over budget"
    );
    assert!(!h.is_closing(c), "over budget, within twice of it");
    h.advance(secs(4.9));
    assert!(!h.is_closing(c), "within the grace");
    h.advance(secs(0.1));
    let read = h.read(c);
    assert_eq!(
        read.ops(),
        ["reconnect"],
        "queued events are dropped on close"
    );
    assert_eq!(read.first("reconnect")["d"]["reason"], "slow consumer");
    assert_eq!(read.close, Some(4010));
}

#[test]
fn a_reader_that_catches_up_within_the_grace_stays() {
    let mut h = Harness::new(slow_reader_config());
    let c = h.connect_subscribed("alice", "channel:1");
    for _ in 0..4 {
        h.publish("channel:1", "message_new", big_event());
    }
    h.advance(secs(4.0));
    assert_eq!(h.read(c).count("message_new"), 4);
    h.advance(secs(5.0));
    assert!(!h.is_closing(c));
}

#[test]
fn a_queue_at_twice_the_budget_is_closed_4010_at_once() {
    let mut h = Harness::new(slow_reader_config());
    let c = h.connect_subscribed("alice", "channel:1");
    for _ in 0..8 {
        h.publish("channel:1", "message_new", big_event());
    }
    let read = h.read(c);
    assert_eq!(read.ops(), ["reconnect"]);
    assert_eq!(read.close, Some(4010));
    assert_eq!(h.stats.snapshot().closes_slow_consumer, 1);
}

#[test]
fn the_priority_lane_overtakes_a_full_normal_lane() {
    let mut h = Harness::new(slow_reader_config());
    let c = h.connect_subscribed("alice", "channel:1");
    for _ in 0..3 {
        h.publish("channel:1", "message_new", big_event());
    }
    h.send(c, r#"{"op":"ping","ref":9}"#);
    let read = h.read(c);
    assert_eq!(
        read.ops(),
        ["pong", "message_new", "message_new", "message_new"]
    );
}

#[test]
fn events_ready_together_are_batched_up_to_the_frame_limit() {
    let config = ShardConfig {
        max_frame_size: 1_000,
        ..ShardConfig::default()
    };
    let mut h = Harness::new(config);
    let c = h.connect_subscribed("alice", "channel:1");
    h.publish("channel:1", "message_new", serde_json::json!({ "n": 0 }));
    assert_eq!(h.read(c).frames, 1, "a lone event is its own frame");
    for n in 0..10 {
        h.publish(
            "channel:1",
            "message_new",
            serde_json::json!({ "n": n, "pad": "x".repeat(100) }),
        );
    }
    let bytes = h.transmit(c);
    let read = crate::testing::parse_server_bytes(JSON, &bytes);
    assert_eq!(read.count("message_new"), 10);
    let order: Vec<u64> = read
        .messages
        .iter()
        .map(|(_, m)| m["d"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(order, (0..10).collect::<Vec<_>>(), "in order");
    // Each event is ~160 bytes: six fit in 1,000, so two frames.
    assert_eq!(read.frames, 2);
    assert!(frame_payload_lengths(&bytes)
        .iter()
        .all(|len| *len <= 1_000));
}

/// The payload length of each frame in `bytes` (short and 16-bit lengths only).
fn frame_payload_lengths(mut bytes: &[u8]) -> Vec<usize> {
    let mut lengths = Vec::new();
    while !bytes.is_empty() {
        let (len, header) = match bytes[1] {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            len => (len as usize, 2),
        };
        lengths.push(len);
        bytes = &bytes[header + len..];
    }
    lengths
}

#[test]
fn a_closing_connection_that_cannot_flush_is_aborted_after_the_flush_limit() {
    let mut h = Harness::new(ShardConfig::default());
    let c = h.connect(JSON);
    h.advance(secs(5.0));
    assert!(h.is_closing(c));
    assert!(!h.hub.session(c).unwrap().is_aborted());
    h.advance(super::CLOSE_FLUSH_LIMIT);
    assert!(h.hub.session(c).unwrap().is_aborted());
}

#[test]
fn messagepack_sessions_get_the_same_rules() {
    let mut h = Harness::new(ShardConfig::default());
    let c = h.connect_ready("alice", Encoding::MsgPack);
    let read = h.read(c);
    assert_eq!(read.ops(), ["hello", "ready"]);
    h.advance(secs(60.0));
    assert_eq!(h.read(c).close, Some(4009));
}

#[test]
fn before_ready_a_ping_flood_gets_a_small_allowance_then_4008() {
    let config = ShardConfig::default();
    let flood_after = config.flood_close_after as usize;
    let mut h = Harness::new(config);
    let c = h.connect(JSON);
    h.read(c);
    // 14 KB: within the pre-ready message size, so the pings are handled.
    let flood = vec![r#"{"op":"ping"}"#; 1_000].join("\n");
    h.send(c, &flood);
    let session = h.hub.session(c).unwrap();
    assert!(session.is_closing());
    assert!(
        session.queued_bytes() <= super::PRE_READY_CONTROL_BUDGET,
        "{} bytes queued for a client that does not read",
        session.queued_bytes()
    );
    let read = h.read(c);
    assert_eq!(read.count("pong"), super::PRE_READY_PING_BURST as usize);
    assert_eq!(read.count("error"), flood_after);
    assert_eq!(read.close, Some(4008));
}

#[test]
fn a_websocket_ping_flood_that_is_never_read_is_closed_4008() {
    let mut h = Harness::new(ShardConfig::default());
    let c = h.connect(JSON);
    h.read(c);
    let frame = client_frame(0x9, &[b'p'; 125]);
    let flood: Vec<u8> = (0..1_000).flat_map(|_| frame.iter().copied()).collect();
    h.input(c, &flood);
    let session = h.hub.session(c).unwrap();
    assert!(session.is_closing());
    assert!(session.queued_bytes() <= super::PRE_READY_CONTROL_BUDGET);
    assert_eq!(h.read(c).close, Some(4008));
}

#[test]
fn replies_past_the_control_budget_close_4008_and_are_dropped() {
    let config = ShardConfig {
        control_budget: 4096,
        rate_limit_burst: 1_000,
        ..ShardConfig::default()
    };
    let mut h = Harness::new(config);
    let c = h.connect_ready("alice", JSON);
    h.read(c);
    // Unknown ops, each answered with an error, never read.
    let garbage = vec![r#"{"op":"nope"}"#; 30].join("\n");
    h.send(c, &garbage);
    assert!(!h.is_closing(c), "30 errors fit in 4 KiB");
    for _ in 0..3 {
        h.send(c, &garbage);
    }
    let read = h.read(c);
    assert!(read.messages.is_empty(), "the unread replies were dropped");
    assert_eq!(read.close, Some(4008));
    assert_eq!(h.stats.snapshot().closes_rate_limited, 1);
}

#[test]
fn messages_before_ready_are_held_to_a_smaller_size() {
    let mut h = Harness::new(ShardConfig::default());
    let big = format!(
        r#"{{"op":"ping","d":"{}"}}"#,
        "x".repeat(super::PRE_READY_MAX_MESSAGE_SIZE)
    );
    let c = h.connect(JSON);
    h.send(c, &big);
    assert_eq!(h.read(c).close, Some(1009), "before ready");
    let c = h.connect_ready("alice", JSON);
    h.send(c, &big);
    let read = h.read(c);
    assert_eq!(read.close, None, "after ready the configured limit applies");
    assert_eq!(read.count("pong"), 1);
}
#[test]
fn a_session_stays_within_the_224_byte_allocation_class() {
    // Each connection's session is one allocation; mimalloc's next size class is 256
    // bytes, which every idle connection would pay (BENCHMARKS.md, issue 17). Rarely
    // used state goes in `Occasional`, boxed while in use (closing and being over the
    // budget included); the WebSocket parser is held only while a message is open, and
    // the outbox's lanes only until the sweeper finds them empty; the user id is held
    // once, by the identity, and its connection place keyed by it.
    let size = std::mem::size_of::<super::Session>();
    assert!(size <= 224, "Session is {size} bytes");
}

/// An `exp` far beyond what the monotonic clock can add (or none at all, `u64::MAX`, as a
/// connection the backend's connect call authenticated has) used to panic the shard.
#[test]
fn a_token_expiring_in_the_far_future_holds_a_year_at_most() {
    let mut h = Harness::new(ShardConfig {
        heartbeat_interval: Duration::from_secs(400 * 24 * 3600),
        ..ShardConfig::default()
    });
    let c = h.connect_ready(&format!("alice@{}", u64::MAX), JSON);
    assert_eq!(h.read(c).ops(), ["hello", "ready"]);
    h.advance(super::messages::MAX_SESSION_LIFETIME - secs(1.0));
    assert_eq!(h.read(c).close, None);
    h.advance(secs(2.0));
    assert_eq!(h.read(c).close, Some(4006));
}

/// A masked client frame with its FIN bit as given (`client_frame` always sets it).
fn fragment(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = client_frame(opcode, payload);
    if !fin {
        frame[0] &= 0x7f;
    }
    frame
}

/// `n` copies of `frame`, back to back, as one read.
fn repeated(frame: &[u8], n: usize) -> Vec<u8> {
    frame.repeat(n)
}

#[test]
fn websocket_pongs_are_charged_like_pings_and_a_pong_flood_is_closed_4008() {
    let config = ShardConfig::default();
    let flood_after = config.flood_close_after as usize;
    let mut h = Harness::new(config);
    let c = h.connect_ready("alice", JSON);
    h.read(c);
    // The ready allowance, full (it fills at its rate from the pre-ready one's burst).
    h.advance(secs(10.0));
    let pong = client_frame(0xA, b"unsolicited");
    h.input(c, &repeated(&pong, PING_BURST as usize));
    assert!(!h.is_closing(c), "within the ping allowance");
    h.input(c, &repeated(&pong, flood_after));
    assert!(!h.is_closing(c), "refused, not yet a flood");
    h.input(c, &pong);
    let read = h.read(c);
    assert_eq!(read.close, Some(4008));
    assert!(
        read.messages.is_empty(),
        "a pong is not answered, even refused"
    );
    assert_eq!(h.stats.snapshot().closes_rate_limited, 1);

    // Before `ready` the smaller ping allowance applies to pongs too.
    let c = h.connect(JSON);
    h.read(c);
    h.input(
        c,
        &repeated(&pong, super::PRE_READY_PING_BURST as usize + flood_after),
    );
    assert!(!h.is_closing(c));
    h.input(c, &pong);
    assert_eq!(h.read(c).close, Some(4008));
}

#[test]
fn empty_data_frames_are_charged_as_events_and_a_stream_of_them_is_closed_4008() {
    let config = ShardConfig::default();
    let (burst, flood_after) = (config.rate_limit_burst, config.flood_close_after);
    let mut h = Harness::new(config);
    let c = h.connect_ready("alice", JSON);
    h.read(c);
    // Empty text and binary frames, and a frame of blank lines: no message in any.
    let empties = [
        client_frame(0x1, b""),
        client_frame(0x2, b""),
        client_frame(0x1, b"\n\n"),
    ];
    for i in 0..burst as usize {
        h.input(c, &empties[i % empties.len()]);
    }
    assert!(
        h.read(c).messages.is_empty(),
        "within the event allowance: no reply"
    );
    h.send(
        c,
        r#"{"op":"unsubscribe","d":{"topics":["channel:9"]},"ref":1}"#,
    );
    assert_eq!(
        h.read(c).first("error")["d"]["code"],
        "rate_limited",
        "the empty frames took the event allowance"
    );
    for i in 0..flood_after as usize - 1 {
        h.input(c, &empties[i % empties.len()]);
    }
    let refused = h.read(c);
    assert_eq!(refused.count("error"), flood_after as usize - 1);
    assert_eq!(refused.close, None);
    h.input(c, &empties[0]);
    assert_eq!(h.read(c).close, Some(4008));
}

#[test]
fn before_ready_a_connection_may_send_32_kib_in_all_then_4008() {
    let mut h = Harness::new(ShardConfig::default());
    // Pings of 12 KiB each: within the pre-ready message size and ping allowance.
    let ping = format!(r#"{{"op":"ping","d":"{}"}}"#, "x".repeat(12 * 1024));
    let c = h.connect(JSON);
    h.read(c);
    h.send(c, &ping);
    h.send(c, &ping);
    assert_eq!(h.read(c).count("pong"), 2, "24 KiB in");
    h.send(c, &ping);
    let read = h.read(c);
    assert_eq!(read.close, Some(4008), "36 KiB in, not ready");
    assert_eq!(read.count("pong"), 0);
    assert_eq!(h.stats.snapshot().closes_rate_limited, 1);

    // Frames that never complete a message are counted too: a text frame begun and
    // continued with empty fragments, which no allowance sees.
    let c = h.connect(JSON);
    h.read(c);
    let mut padded = fragment(false, 0x1, b"{");
    let empty = fragment(false, 0x0, b"");
    let fits = (super::PRE_READY_INPUT_BYTES - padded.len()) / empty.len();
    padded.extend(repeated(&empty, fits));
    h.input(c, &padded);
    assert!(!h.is_closing(c), "just under 32 KiB");
    h.input(c, &repeated(&empty, 2));
    assert_eq!(h.read(c).close, Some(4008));

    // `ready` starts the count afresh: the pre-ready bound is not a lifetime one.
    let c = h.connect(JSON);
    h.send(c, &ping);
    h.send(c, r#"{"op":"identify","d":{"token":"alice"}}"#);
    for _ in 0..4 {
        h.send(c, &ping);
    }
    let read = h.read(c);
    assert_eq!(read.close, None);
    assert_eq!(read.count("pong"), 5);
}

#[test]
fn a_message_padded_with_empty_continuation_frames_is_closed_1009() {
    let config = ShardConfig {
        max_message_size: 1024,
        ..ShardConfig::default()
    };
    let mut h = Harness::new(config);
    let c = h.connect_ready("alice", JSON);
    h.read(c);
    // A ping in four fragments, with a WebSocket ping between two: served.
    h.input(c, &fragment(false, 0x1, br#"{"op":"#));
    h.input(c, &fragment(false, 0x0, br#""ping""#));
    h.input(c, &client_frame(0x9, b"between"));
    h.input(c, &fragment(false, 0x0, b""));
    h.input(c, &fragment(true, 0x0, br#","ref":1}"#));
    let read = h.read(c);
    assert_eq!((read.count("pong"), read.pongs), (1, 1));
    // Begun, then padded with empty fragments for ever: two message sizes' worth is
    // the most it may take on the wire (6 bytes a fragment).
    h.input(c, &fragment(false, 0x1, b"{"));
    h.input(c, &repeated(&fragment(false, 0x0, b""), 2 * 1024 / 6 - 1));
    assert!(!h.is_closing(c));
    h.input(c, &repeated(&fragment(false, 0x0, b""), 2));
    assert_eq!(h.read(c).close, Some(1009));
    assert_eq!(h.stats.snapshot().closes_message_too_big, 1);
}

#[test]
fn a_client_that_only_pings_is_never_closed_for_its_input_bytes() {
    let config = ShardConfig {
        max_message_size: 1024,
        heartbeat_interval: Duration::from_secs(3600),
        ..ShardConfig::default()
    };
    let mut h = Harness::new(config);
    let c = h.connect_ready("alice", JSON);
    h.read(c);
    // Far more than twice the message size in all, spread over time.
    for i in 0..400 {
        h.advance(Duration::from_secs(1) / PING_RATE_PER_SEC);
        if i % 2 == 0 {
            h.send(c, r#"{"op":"ping"}"#);
        } else {
            h.input(c, &client_frame(0x9, b"probe"));
        }
    }
    let read = h.read(c);
    assert_eq!(read.close, None);
    assert_eq!((read.count("pong"), read.pongs), (200, 200));
}

#[test]
fn one_subscribe_is_answered_forbidden_invalid_topic_and_limit_at_once() {
    // Room for one topic besides the automatic two (`user:alice`, `global`).
    let config = ShardConfig {
        max_subscriptions: 3,
        ..ShardConfig::default()
    };
    let mut h = Harness::new(config);
    let c = h.connect_ready("alice", JSON);
    h.read(c);
    let topics = r#"["channel:1","server:9","not a topic","channel:2","user:bob","channel:3"]"#;
    h.send(
        c,
        &format!(r#"{{"op":"subscribe","d":{{"topics":{topics}}},"ref":5}}"#),
    );
    let read = h.read(c);
    assert_eq!(
        read.ops(),
        ["subscribed", "error", "error", "error"],
        "one reply per outcome"
    );
    let reply = |i: usize| &read.messages[i].1;
    assert_eq!(reply(0)["d"]["topics"], serde_json::json!(["channel:1"]));
    let refusals: Vec<_> = (1..4)
        .map(|i| {
            (
                reply(i)["d"]["code"].clone(),
                reply(i)["d"]["topics"].clone(),
            )
        })
        .collect();
    assert_eq!(
        refusals,
        [
            (
                "forbidden".into(),
                serde_json::json!(["server:9", "user:bob"])
            ),
            ("invalid_topic".into(), serde_json::json!(["not a topic"])),
            (
                "limit".into(),
                serde_json::json!(["channel:2", "channel:3"])
            ),
        ]
    );
    assert!(
        read.messages.iter().all(|(_, m)| m["ref"] == 5),
        "every reply carries the request's ref"
    );
}

/// The parser is let go between messages (an idle connection holds none) and kept
/// while one is open: a message cut across reads, or fragmented across frames with a
/// ping among them, still arrives whole, and the limit lifted at `ready` holds for a
/// parser made after it.
#[test]
fn the_websocket_parser_is_held_only_while_a_message_is_open() {
    let mut h = Harness::new(ShardConfig::default());
    let c = h.connect_ready("alice", JSON);
    h.read(c);
    let holds_parser = |h: &Harness| h.hub.session(c).unwrap().ws.is_held();
    assert!(!holds_parser(&h), "ready, and nothing open");

    let ping = client_frame(1, br#"{"op":"ping","ref":1}"#);
    let (head, tail) = ping.split_at(4);
    h.input(c, head);
    assert!(holds_parser(&h), "half a frame");
    h.input(c, tail);
    assert!(!holds_parser(&h));
    assert_eq!(h.read(c).ops(), ["pong"]);

    let mut first = client_frame(1, br#"{"op":"pi"#);
    first[0] &= 0x7f;
    let last = client_frame(0, br#"ng","ref":2}"#);
    h.input(c, &first);
    h.input(c, &client_frame(9, b""));
    assert!(
        holds_parser(&h),
        "a fragmented message, a ping among its frames"
    );
    h.input(c, &last);
    assert!(!holds_parser(&h));
    assert_eq!(h.read(c).first("pong")["ref"], 2);

    let large = format!(
        r#"{{"op":"ping","ref":3,"pad":"{}"}}"#,
        "x".repeat(super::PRE_READY_MAX_MESSAGE_SIZE)
    );
    h.send(c, &large);
    let read = h.read(c);
    assert_eq!(
        read.close, None,
        "a new parser has the limit lifted at ready"
    );
    assert_eq!(read.first("pong")["ref"], 3);
}
