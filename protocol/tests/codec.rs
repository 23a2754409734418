//! Literal-byte tests of the single-message codec: every op, every error.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use coregate_protocol::*;

const MAX: usize = DEFAULT_MAX_MESSAGE_SIZE;

fn pos(offset: u64, epoch: &str) -> coregate_protocol::StreamPosition {
    coregate_protocol::StreamPosition {
        offset,
        epoch: epoch.into(),
    }
}

fn dec(encoding: Encoding, bytes: &[u8]) -> Result<ClientEnvelope, DecodeErrorWithRef> {
    decode_client(encoding, &mut bytes.to_vec(), MAX)
}

fn json(bytes: &[u8]) -> Result<ClientEnvelope, DecodeErrorWithRef> {
    dec(Encoding::Json, bytes)
}

fn mp(bytes: &[u8]) -> Result<ClientEnvelope, DecodeErrorWithRef> {
    dec(Encoding::MsgPack, bytes)
}

fn env(r#ref: Option<u64>, message: ClientMessage) -> ClientEnvelope {
    ClientEnvelope { r#ref, message }
}

fn err(error: DecodeError) -> DecodeErrorWithRef {
    DecodeErrorWithRef { error, r#ref: None }
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

#[test]
fn json_every_client_op() {
    use ClientMessage as M;
    let cases: Vec<(&[u8], ClientEnvelope)> = vec![
        (br#"{"op":"ping","ref":1}"#, env(Some(1), M::Ping)),
        (br#"{"op":"ping"}"#, env(None, M::Ping)),
        (br#"{"op":"ping","d":null}"#, env(None, M::Ping)),
        (
            br#"{"op":"identify","d":{"token":"abc"},"ref":2}"#,
            env(
                Some(2),
                M::Identify {
                    token: "abc".into(),
                },
            ),
        ),
        (
            br#"{"d":{"token":"t2"},"op":"refresh"}"#,
            env(None, M::Refresh { token: "t2".into() }),
        ),
        (
            br#"{"op":"subscribe","d":{"topics":["channel:1","server:2"]},"ref":3}"#,
            env(
                Some(3),
                M::Subscribe {
                    topics: strings(&["channel:1", "server:2"]),
                    since: None,
                },
            ),
        ),
        (
            br#"{"op":"subscribe","d":{"topics":["channel:1"],"since":{"channel:1":{"offset":42,"epoch":"e1"}}}}"#,
            env(
                None,
                M::Subscribe {
                    topics: strings(&["channel:1"]),
                    since: Some(BTreeMap::from([("channel:1".to_string(), pos(42, "e1"))])),
                },
            ),
        ),
        (
            br#"{"op":"history","d":{"topic":"channel:1"},"ref":4}"#,
            env(
                Some(4),
                M::History {
                    topic: "channel:1".into(),
                    limit: None,
                    since: None,
                },
            ),
        ),
        (
            br#"{"op":"history","d":{"topic":"channel:1","limit":10,"since":{"offset":3,"epoch":"e"}}}"#,
            env(
                None,
                M::History {
                    topic: "channel:1".into(),
                    limit: Some(10),
                    since: Some(pos(3, "e")),
                },
            ),
        ),
        (
            br#"{"op":"unsubscribe","d":{"topics":[]}}"#,
            env(None, M::Unsubscribe { topics: vec![] }),
        ),
        (
            br#"{"op":"typing_start","d":{"topic":"channel:1"}}"#,
            env(
                None,
                M::TypingStart {
                    topic: "channel:1".into(),
                },
            ),
        ),
        (
            br#"{"op":"typing_stop","d":{"topic":"channel:1"}}"#,
            env(
                None,
                M::TypingStop {
                    topic: "channel:1".into(),
                },
            ),
        ),
        (
            br#"{"op":"presence_set","d":{"status":"away"}}"#,
            env(
                None,
                M::PresenceSet {
                    status: PresenceStatus::Away,
                },
            ),
        ),
        (
            br#"{"op":"presence_query","d":{"user_ids":["a","b"]}}"#,
            env(
                None,
                M::PresenceQuery {
                    user_ids: strings(&["a", "b"]),
                },
            ),
        ),
        (
            br#"{"op":"voice_join","d":{"channel":"v1"}}"#,
            env(
                None,
                M::VoiceJoin {
                    channel: "v1".into(),
                },
            ),
        ),
        (
            br#"{"op":"voice_leave","d":{"channel":"v1"}}"#,
            env(
                None,
                M::VoiceLeave {
                    channel: "v1".into(),
                },
            ),
        ),
        (
            br#"{"op":"voice_answer","d":{"channel":"v1","sdp":"v=0\r\n"}}"#,
            env(
                None,
                M::VoiceAnswer {
                    channel: "v1".into(),
                    sdp: "v=0\r\n".into(),
                },
            ),
        ),
        (
            br#"{"op":"voice_ice_candidate","d":{"channel":"v1","candidate":"c"}}"#,
            env(
                None,
                M::VoiceIceCandidate {
                    channel: "v1".into(),
                    candidate: "c".into(),
                },
            ),
        ),
        (
            br#"{"op":"voice_mute","d":{"channel":"v1"}}"#,
            env(
                None,
                M::VoiceMute {
                    channel: "v1".into(),
                },
            ),
        ),
        (
            br#"{"op":"voice_unmute","d":{"channel":"v1"},"extra":{"ignored":[1,2]}}"#,
            env(
                None,
                M::VoiceUnmute {
                    channel: "v1".into(),
                },
            ),
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            json(bytes),
            Ok(expected),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn msgpack_literal_messages() {
    use ClientMessage as M;
    // {"op":"ping","ref":1}
    assert_eq!(
        mp(b"\x82\xa2op\xa4ping\xa3ref\x01"),
        Ok(env(Some(1), M::Ping))
    );
    // {"op":"ping","d":nil}
    assert_eq!(mp(b"\x82\xa2op\xa4ping\xa1d\xc0"), Ok(env(None, M::Ping)));
    // {"op":"identify","d":{"token":"abc"},"ref":300}
    assert_eq!(
        mp(b"\x83\xa2op\xa8identify\xa1d\x81\xa5token\xa3abc\xa3ref\xcd\x01\x2c"),
        Ok(env(
            Some(300),
            M::Identify {
                token: "abc".into()
            }
        ))
    );
    // {"op":"subscribe","d":{"topics":["global"],"since":{"global":{"offset":7,"epoch":"e"}}}}
    assert_eq!(
        mp(b"\x82\xa2op\xa9subscribe\xa1d\x82\xa6topics\x91\xa6global\xa5since\x81\xa6global\x82\xa6offset\x07\xa5epoch\xa1e"),
        Ok(env(
            None,
            M::Subscribe {
                topics: strings(&["global"]),
                since: Some(BTreeMap::from([("global".to_string(), pos(7, "e"))])),
            }
        ))
    );
    // {"op":"presence_set","d":{"status":"busy"}}
    assert_eq!(
        mp(b"\x82\xa2op\xacpresence_set\xa1d\x81\xa6status\xa4busy"),
        Ok(env(
            None,
            M::PresenceSet {
                status: PresenceStatus::Busy
            }
        ))
    );
    // {"op":"voice_answer","d":{"channel":"v","sdp":"s"}} with str8 for the op
    assert_eq!(
        mp(b"\x82\xa2op\xd9\x0cvoice_answer\xa1d\x82\xa7channel\xa1v\xa3sdp\xa1s"),
        Ok(env(
            None,
            M::VoiceAnswer {
                channel: "v".into(),
                sdp: "s".into()
            }
        ))
    );
}

#[test]
fn error_too_large() {
    for e in Encoding::ALL {
        let mut input = vec![b' '; 11];
        assert_eq!(
            decode_client(e, &mut input, 10),
            Err(err(DecodeError::TooLarge { size: 11, max: 10 }))
        );
    }
}

#[test]
fn error_too_deep_at_exactly_the_limit() {
    // The envelope is level 1, so `d` may add MAX_NESTING_DEPTH - 1 levels.
    let nested = |levels: usize| {
        format!(
            r#"{{"op":"ping","d":{}{}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    };
    assert!(json(nested(MAX_NESTING_DEPTH - 1).as_bytes()).is_ok());
    assert_eq!(
        json(nested(MAX_NESTING_DEPTH).as_bytes()),
        Err(err(DecodeError::TooDeep {
            max: MAX_NESTING_DEPTH
        }))
    );
    // A deep attack far beyond the limit is refused just the same (and does not overflow).
    let attack = "[".repeat(60_000);
    assert_eq!(
        json(attack.as_bytes()),
        Err(err(DecodeError::TooDeep {
            max: MAX_NESTING_DEPTH
        }))
    );

    let nested_mp = |levels: usize| {
        let mut v = b"\x82\xa2op\xa4ping\xa1d".to_vec();
        v.extend(std::iter::repeat_n(0x91u8, levels));
        v.push(0xc0);
        v
    };
    assert!(mp(&nested_mp(MAX_NESTING_DEPTH - 1)).is_ok());
    assert_eq!(
        mp(&nested_mp(MAX_NESTING_DEPTH)),
        Err(err(DecodeError::TooDeep {
            max: MAX_NESTING_DEPTH
        }))
    );
}

#[test]
fn error_invalid_utf8() {
    assert_eq!(
        json(b"{\"op\":\"ping\",\"x\":\"\xff\"}"),
        Err(err(DecodeError::InvalidUtf8))
    );
    assert_eq!(
        mp(b"\x82\xa2op\xa4ping\xa1x\xa1\xff"),
        Err(err(DecodeError::InvalidUtf8))
    );
    // In a key too.
    assert_eq!(mp(b"\x81\xa1\xfe\xc0"), Err(err(DecodeError::InvalidUtf8)));
}

#[test]
fn error_truncated() {
    assert_eq!(mp(b"\x82\xa2op\xa4ping"), Err(err(DecodeError::Truncated)));
    assert_eq!(mp(b"\x81\xa2op\xcd\x01"), Err(err(DecodeError::Truncated)));
}

#[test]
fn error_declared_length_exceeds_input() {
    // str32 claiming 4 GiB
    assert_eq!(
        mp(b"\x81\xa2op\xdb\xff\xff\xff\xffping"),
        Err(err(DecodeError::DeclaredLengthExceedsInput {
            declared: 0xffff_ffff,
            available: 4
        }))
    );
    // array32 claiming 4 billion elements
    assert_eq!(
        mp(b"\x82\xa2op\xa4ping\xa1d\xdd\xff\xff\xff\xff\xc0"),
        Err(err(DecodeError::DeclaredLengthExceedsInput {
            declared: 0xffff_ffff,
            available: 1
        }))
    );
    // map16 with more entries than bytes
    assert_eq!(
        mp(b"\xde\x01\x00\xc0"),
        Err(err(DecodeError::DeclaredLengthExceedsInput {
            declared: 256,
            available: 1
        }))
    );
    // bin32
    assert_eq!(
        mp(b"\xc6\x00\x10\x00\x00ab"),
        Err(err(DecodeError::DeclaredLengthExceedsInput {
            declared: 0x0010_0000,
            available: 2
        }))
    );
}

#[test]
fn error_wrong_type() {
    let wt = |field, expected| err(DecodeError::WrongType { field, expected });
    assert_eq!(json(b"[1,2]"), Err(wt("message", "a map")));
    assert_eq!(json(b"\"ping\""), Err(wt("message", "a map")));
    assert_eq!(mp(b"\x01"), Err(wt("message", "a map")));
    assert_eq!(json(br#"{"op":1}"#), Err(wt("op", "a string")));
    assert_eq!(mp(b"\x81\xa2op\x01"), Err(wt("op", "a string")));
    assert_eq!(
        json(br#"{"op":"ping","ref":"x"}"#),
        Err(wt("ref", "an unsigned integer"))
    );
    assert_eq!(
        json(br#"{"op":"ping","ref":-1}"#),
        Err(wt("ref", "an unsigned integer"))
    );
    assert_eq!(
        json(br#"{"op":"ping","ref":1.5}"#),
        Err(wt("ref", "an unsigned integer"))
    );
    let with_ref = |field, expected| {
        Err(DecodeErrorWithRef {
            error: DecodeError::WrongType { field, expected },
            r#ref: Some(9),
        })
    };
    assert_eq!(
        json(br#"{"op":"identify","d":"tok","ref":9}"#),
        with_ref("d", "a map")
    );
    assert_eq!(
        json(br#"{"op":"identify","d":{"token":5},"ref":9}"#),
        with_ref("token", "a string")
    );
    assert_eq!(
        json(br#"{"op":"subscribe","d":{"topics":"channel:1"},"ref":9}"#),
        with_ref("topics", "an array of strings")
    );
    assert_eq!(
        json(br#"{"op":"subscribe","d":{"topics":[1]},"ref":9}"#),
        with_ref("topics", "an array of strings")
    );
    assert_eq!(
        json(br#"{"op":"subscribe","d":{"topics":[],"since":{"a":"b"}},"ref":9}"#),
        with_ref("since", "a map of topic to {offset, epoch}")
    );
    assert_eq!(
        mp(b"\x83\xa2op\xa8identify\xa1d\x81\xa5token\xc3\xa3ref\x09"),
        with_ref("token", "a string")
    );
}

#[test]
fn error_invalid_value() {
    let expected = Err(err(DecodeError::InvalidValue {
        field: "status",
        expected: "one of online, away, busy, invisible",
    }));
    assert_eq!(
        json(br#"{"op":"presence_set","d":{"status":"offline"}}"#),
        expected
    );
    assert_eq!(
        json(br#"{"op":"presence_set","d":{"status":"sleepy"}}"#),
        expected
    );
}

#[test]
fn error_missing_field() {
    assert_eq!(
        json(br#"{"ref":4}"#),
        Err(DecodeErrorWithRef {
            error: DecodeError::MissingField("op"),
            r#ref: Some(4)
        })
    );
    assert_eq!(
        json(br#"{"op":"identify","ref":4}"#),
        Err(DecodeErrorWithRef {
            error: DecodeError::MissingField("d"),
            r#ref: Some(4)
        })
    );
    assert_eq!(
        json(br#"{"op":"voice_answer","d":{"channel":"v"}}"#),
        Err(err(DecodeError::MissingField("sdp")))
    );
    assert_eq!(
        mp(b"\x82\xa2op\xa8identify\xa1d\x80"),
        Err(err(DecodeError::MissingField("token")))
    );
}

#[test]
fn error_unknown_op_keeps_ref() {
    let e = json(br#"{"op":"launch_missiles","ref":77}"#).unwrap_err();
    assert_eq!(e.error, DecodeError::UnknownOp("launch_missiles".into()));
    assert_eq!(e.r#ref, Some(77));
    assert_eq!(e.error.error_code(), ErrorCode::UnknownOp);
    let e = mp(b"\x82\xa2op\xa3pig\xa3ref\x05").unwrap_err();
    assert_eq!(e.error, DecodeError::UnknownOp("pig".into()));
    assert_eq!(e.r#ref, Some(5));
    // Long ops are truncated before being echoed.
    let long = format!(r#"{{"op":"{}"}}"#, "x".repeat(1000));
    let e = json(long.as_bytes()).unwrap_err();
    assert_eq!(e.error, DecodeError::UnknownOp("x".repeat(64)));
}

#[test]
fn error_malformed_trailing_empty() {
    for bad in [&b"{"[..], b"{\"op\":}", b"nul", b"{\"op\":\"ping\"} x"] {
        let e = json(bad).unwrap_err();
        assert!(
            matches!(e.error, DecodeError::Malformed(_)),
            "{bad:?}: {e:?}"
        );
        assert_eq!(e.error.error_code(), ErrorCode::BadRequest);
    }
    // bin values have no JSON-like reading
    assert!(matches!(
        mp(b"\x82\xa2op\xa4ping\xa1d\xc4\x01a").unwrap_err().error,
        DecodeError::Malformed(_)
    ));
    assert!(matches!(
        mp(b"\xc1").unwrap_err().error,
        DecodeError::Malformed(_)
    ));
    assert_eq!(
        mp(b"\x81\xa2op\xa4ping\x00\x00"),
        Err(err(DecodeError::TrailingBytes { count: 2 }))
    );
    assert_eq!(json(b""), Err(err(DecodeError::Empty)));
    assert_eq!(json(b" \r\n\t"), Err(err(DecodeError::Empty)));
    assert_eq!(mp(b""), Err(err(DecodeError::Empty)));
}

#[test]
fn encode_client_literals() {
    let mut out = Vec::new();
    encode_client(Encoding::Json, &env(Some(1), ClientMessage::Ping), &mut out);
    assert_eq!(out, br#"{"op":"ping","ref":1}"#);
    out.clear();
    encode_client(
        Encoding::MsgPack,
        &env(Some(1), ClientMessage::Ping),
        &mut out,
    );
    assert_eq!(out, b"\x82\xa2op\xa4ping\xa3ref\x01");
    out.clear();
    encode_client(
        Encoding::Json,
        &env(
            None,
            ClientMessage::Subscribe {
                topics: strings(&["a"]),
                since: None,
            },
        ),
        &mut out,
    );
    assert_eq!(out, br#"{"op":"subscribe","d":{"topics":["a"]}}"#);
}

#[test]
fn encode_server_literals() {
    let mut out = Vec::new();
    let pong = ServerMessage::Pong;
    encode_server(
        Encoding::Json,
        &ServerEnvelope::new(&pong).with_ref(Some(3)),
        &mut out,
    );
    assert_eq!(out, br#"{"op":"pong","ref":3}"#);
    out.clear();
    encode_server(
        Encoding::MsgPack,
        &ServerEnvelope::new(&pong).with_ref(Some(3)),
        &mut out,
    );
    assert_eq!(out, b"\x82\xa2op\xa4pong\xa3ref\x03");

    let error = ServerMessage::Error {
        code: ErrorCode::Forbidden,
        message: "no".into(),
        topics: Some(strings(&["server:1"])),
        retry_after_ms: None,
    };
    out.clear();
    encode_server(
        Encoding::Json,
        &ServerEnvelope::new(&error).with_ref(Some(8)),
        &mut out,
    );
    assert_eq!(
        out,
        br#"{"op":"error","d":{"code":"forbidden","message":"no","topics":["server:1"]},"ref":8}"#
    );
    let decoded = decode_server(Encoding::Json, &out).unwrap();
    assert_eq!(decoded.r#ref, Some(8));
    assert_eq!(decoded.to_message(), Ok(error.clone()));

    let typing = ServerMessage::TypingStart {
        user_id: "u".into(),
        name: Some("Ann".into()),
    };
    let envelope = ServerEnvelope {
        message: &typing,
        r#ref: None,
        topic: Some("channel:\"q\""),
        offset: Some(12),
    };
    out.clear();
    encode_server(Encoding::Json, &envelope, &mut out);
    assert_eq!(
        out,
        br#"{"op":"typing_start","d":{"user_id":"u","name":"Ann"},"topic":"channel:\"q\"","offset":12}"#
    );
    out.clear();
    encode_server(Encoding::MsgPack, &envelope, &mut out);
    let decoded = decode_server(Encoding::MsgPack, &out).unwrap();
    assert_eq!(decoded.topic.as_deref(), Some("channel:\"q\""));
    assert_eq!(decoded.offset, Some(12));
    assert_eq!(decoded.to_message(), Ok(typing));
}

#[test]
fn decode_server_generic_backend_event() {
    let d = decode_server(
        Encoding::Json,
        br#"{"op":"message_new","d":{"id":1},"topic":"channel:1","offset":3}"#,
    )
    .unwrap();
    assert_eq!(d.op, "message_new");
    assert_eq!(d.d, serde_json::json!({"id": 1}));
    assert_eq!(
        d.to_message(),
        Err(DecodeError::UnknownOp("message_new".into()))
    );
    assert_eq!(decode_server(Encoding::Json, b""), Err(DecodeError::Empty));
    assert_eq!(
        decode_server(Encoding::MsgPack, b"\x92\x01\xcd"),
        Err(DecodeError::Truncated)
    );
}

#[test]
fn frames_json() {
    let mut frame =
        b"{\"op\":\"ping\",\"ref\":1}\n{\"op\":\"nope\",\"ref\":2}\n\n{\"op\":\"ping\",\"ref\":3}"
            .to_vec();
    let results: Vec<_> = decode_client_frame(Encoding::Json, &mut frame, MAX).collect();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0], Ok(env(Some(1), ClientMessage::Ping)));
    assert_eq!(results[1].as_ref().unwrap_err().r#ref, Some(2));
    assert_eq!(results[2], Ok(env(Some(3), ClientMessage::Ping)));
    // Per-message size limit.
    let mut frame = b"{\"op\":\"ping\"}\n{\"op\":\"ping\",\"ref\":12345}".to_vec();
    let results: Vec<_> = decode_client_frame(Encoding::Json, &mut frame, 14).collect();
    assert!(results[0].is_ok());
    assert!(matches!(
        results[1].as_ref().unwrap_err().error,
        DecodeError::TooLarge { .. }
    ));
    assert_eq!(decode_client_frame(Encoding::Json, &mut [], MAX).count(), 0);
}

#[test]
fn frames_msgpack() {
    let mut frame = Vec::new();
    frame.extend_from_slice(b"\x82\xa2op\xa4ping\xa3ref\x01");
    frame.extend_from_slice(b"\x81\xa2op\xa3bad");
    frame.extend_from_slice(b"\x82\xa2op\xa4ping\xa3ref\x03");
    frame.extend_from_slice(b"\x82\xa2op\xa4ping\xa3ref"); // truncated
    let results: Vec<_> = decode_client_frame(Encoding::MsgPack, &mut frame, MAX).collect();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0], Ok(env(Some(1), ClientMessage::Ping)));
    assert_eq!(results[1], Err(err(DecodeError::UnknownOp("bad".into()))));
    assert_eq!(results[2], Ok(env(Some(3), ClientMessage::Ping)));
    assert_eq!(results[3], Err(err(DecodeError::Truncated)));

    let mut lying = b"\x82\xa2op\xa4ping\xa3ref\x01\xdd\xff\xff\xff\xff".to_vec();
    let results: Vec<_> = decode_client_frame(Encoding::MsgPack, &mut lying, MAX).collect();
    assert_eq!(results.len(), 2);
    assert!(matches!(
        results[1].as_ref().unwrap_err().error,
        DecodeError::DeclaredLengthExceedsInput { .. }
    ));
}

#[test]
fn frame_builder_round_trips_through_split() {
    for encoding in Encoding::ALL {
        for n in [1usize, 16, 64] {
            let mut fb = FrameBuilder::new(encoding, 1 << 20);
            let mut messages = Vec::new();
            for i in 0..n {
                let mut m = Vec::new();
                let msg = ServerMessage::Refreshed { exp: i as u64 };
                encode_server(encoding, &ServerEnvelope::new(&msg), &mut m);
                fb.push(&m).unwrap();
                messages.push(m);
            }
            assert_eq!(fb.message_count(), n);
            if encoding == Encoding::Json {
                assert!(!fb.as_bytes().ends_with(b"\n"));
            }
            let parts = split_server_frame(encoding, fb.as_bytes()).unwrap();
            assert_eq!(
                parts,
                messages.iter().map(Vec::as_slice).collect::<Vec<_>>()
            );
        }
    }
    // The bound: 64 messages of ~40 bytes do not fit in 256 bytes.
    let mut fb = FrameBuilder::new(Encoding::Json, 256);
    let mut m = Vec::new();
    encode_server(
        Encoding::Json,
        &ServerEnvelope::new(&ServerMessage::Refreshed { exp: 1 }),
        &mut m,
    );
    let mut pushed = 0;
    while fb.push(&m).is_ok() {
        pushed += 1;
    }
    assert!(fb.len() <= 256);
    assert_eq!(pushed, (256 + 1) / (m.len() + 1));
}
