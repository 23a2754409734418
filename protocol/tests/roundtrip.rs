//! Property tests: every message variant round-trips through both encodings, and arbitrary
//! bytes never panic any decoder.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use coregate_protocol::*;
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;

fn position() -> impl Strategy<Value = coregate_protocol::StreamPosition> {
    (any::<u64>(), text())
        .prop_map(|(offset, epoch)| coregate_protocol::StreamPosition { offset, epoch })
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including quotes, backslashes, control characters and newlines.
    prop_oneof![".{0,24}", "[a-z:0-9_]{0,12}"]
}

fn texts() -> impl Strategy<Value = Vec<String>> {
    vec(text(), 0..6)
}

fn settable_status() -> impl Strategy<Value = PresenceStatus> {
    prop_oneof![
        Just(PresenceStatus::Online),
        Just(PresenceStatus::Away),
        Just(PresenceStatus::Busy),
        Just(PresenceStatus::Invisible),
    ]
}

fn any_status() -> impl Strategy<Value = PresenceStatus> {
    prop_oneof![settable_status(), Just(PresenceStatus::Offline)]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::UnknownOp),
        Just(ErrorCode::Forbidden),
        Just(ErrorCode::Limit),
        Just(ErrorCode::RateLimited),
        Just(ErrorCode::InvalidToken),
        Just(ErrorCode::InvalidTopic),
        Just(ErrorCode::NotReady),
        Just(ErrorCode::Unavailable),
    ]
}

/// A payload passed through as it is (`rpc`'s `d`): scalars, arrays and maps, nested.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u32>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((text(), inner), 0..4)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    use ClientMessage as M;
    prop_oneof![
        text().prop_map(|token| M::Identify { token }),
        text().prop_map(|token| M::Refresh { token }),
        Just(M::Ping),
        (texts(), option::of(btree_map(text(), position(), 0..4)))
            .prop_map(|(topics, since)| M::Subscribe { topics, since }),
        (text(), option::of(any::<u64>()), option::of(position())).prop_map(
            |(topic, limit, since)| M::History {
                topic,
                limit,
                since
            }
        ),
        texts().prop_map(|topics| M::Unsubscribe { topics }),
        text().prop_map(|topic| M::TypingStart { topic }),
        text().prop_map(|topic| M::TypingStop { topic }),
        settable_status().prop_map(|status| M::PresenceSet { status }),
        texts().prop_map(|user_ids| M::PresenceQuery { user_ids }),
        (text(), json_value()).prop_map(|(method, d)| M::Rpc { method, d }),
        text().prop_map(|channel| M::VoiceJoin { channel }),
        text().prop_map(|channel| M::VoiceLeave { channel }),
        (text(), text()).prop_map(|(channel, sdp)| M::VoiceAnswer { channel, sdp }),
        (text(), text())
            .prop_map(|(channel, candidate)| M::VoiceIceCandidate { channel, candidate }),
        text().prop_map(|channel| M::VoiceMute { channel }),
        text().prop_map(|channel| M::VoiceUnmute { channel }),
    ]
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    use ServerMessage as M;
    prop_oneof![
        (text(), any::<u64>()).prop_map(|(session_id, heartbeat_interval_ms)| M::Hello {
            session_id,
            heartbeat_interval_ms
        }),
        (
            text(),
            text(),
            texts(),
            proptest::option::of(
                // A `null` data reads as none given.
                json_value().prop_filter("not null", |v| !v.is_null())
            )
        )
            .prop_map(|(user_id, session_id, topics, data)| M::Ready {
                user_id,
                session_id,
                topics,
                data
            }),
        Just(M::Pong),
        any::<u64>().prop_map(|exp| M::Refreshed { exp }),
        (
            texts(),
            option::of(btree_map(text(), position(), 0..4)),
            option::of(btree_map(text(), any::<bool>(), 0..4))
        )
            .prop_map(|(topics, positions, recovered)| M::Subscribed {
                topics,
                positions,
                recovered
            }),
        (
            text(),
            proptest::collection::vec(
                (text(), option::of(json_value()), any::<u64>()).prop_map(|(op, d, offset)| {
                    coregate_protocol::HistoryPublication {
                        op,
                        d: d.filter(|d| !d.is_null()),
                        offset,
                    }
                }),
                0..4
            ),
            position()
        )
            .prop_map(|(topic, publications, at)| M::History {
                topic,
                publications,
                offset: at.offset,
                epoch: at.epoch
            }),
        texts().prop_map(|topics| M::Unsubscribed { topics }),
        (
            error_code(),
            text(),
            option::of(texts()),
            option::of(any::<u64>())
        )
            .prop_map(|(code, message, topics, retry_after_ms)| M::Error {
                code,
                message,
                topics,
                retry_after_ms
            }),
        (text(), option::of(text())).prop_map(|(user_id, name)| M::TypingStart { user_id, name }),
        (text(), option::of(text())).prop_map(|(user_id, name)| M::TypingStop { user_id, name }),
        (text(), any_status(), any::<u64>()).prop_map(|(user_id, status, since)| {
            M::PresenceUpdate {
                user_id,
                status,
                since,
            }
        }),
        json_value().prop_map(|d| M::RpcResult { d }),
        vec((text(), any_status(), any::<u64>()), 0..4).prop_map(|users| M::PresenceState {
            users: users
                .into_iter()
                .map(|(user_id, status, since)| PresenceEntry {
                    user_id,
                    status,
                    since
                })
                .collect()
        }),
        (text(), text()).prop_map(|(channel, sdp)| M::VoiceOffer { channel, sdp }),
        (text(), text())
            .prop_map(|(channel, candidate)| M::VoiceIceCandidate { channel, candidate }),
        (text(), text(), option::of(text())).prop_map(|(channel, user_id, name)| {
            M::VoiceUserJoined {
                channel,
                user_id,
                name,
            }
        }),
        (text(), text(), option::of(text())).prop_map(|(channel, user_id, name)| {
            M::VoiceUserLeft {
                channel,
                user_id,
                name,
            }
        }),
        (text(), text()).prop_map(|(channel, user_id)| M::VoiceUserMuted { channel, user_id }),
        (text(), text()).prop_map(|(channel, user_id)| M::VoiceUserUnmuted { channel, user_id }),
        (
            text(),
            vec((text(), option::of(text()), any::<bool>()), 0..4)
        )
            .prop_map(|(channel, ps)| M::VoiceRoomState {
                channel,
                participants: ps
                    .into_iter()
                    .map(|(user_id, name, muted)| VoiceParticipant {
                        user_id,
                        name,
                        muted
                    })
                    .collect()
            }),
        (text(), text(), proptest::option::of(text())).prop_map(|(code, message, channel)| {
            M::VoiceError {
                code,
                message,
                channel,
            }
        }),
        (text(), any::<u64>()).prop_map(|(reason, retry_after_ms)| M::Reconnect {
            reason,
            retry_after_ms
        }),
    ]
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![Just(Encoding::Json), Just(Encoding::MsgPack)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_messages_round_trip(
        encoding in encoding(),
        message in client_message(),
        r#ref in option::of(any::<u64>()),
    ) {
        let envelope = ClientEnvelope { r#ref, message };
        let mut bytes = Vec::new();
        encode_client(encoding, &envelope, &mut bytes);
        if encoding == Encoding::Json {
            prop_assert!(!bytes.contains(&b'\n'));
        }
        let decoded = decode_client(encoding, &mut bytes, usize::MAX);
        prop_assert_eq!(decoded, Ok(envelope));
    }

    #[test]
    fn server_messages_round_trip(
        encoding in encoding(),
        message in server_message(),
        r#ref in option::of(any::<u64>()),
        topic in option::of(text()),
        offset in option::of(any::<u64>()),
    ) {
        let envelope = ServerEnvelope { message: &message, r#ref, topic: topic.as_deref(), offset };
        let mut bytes = Vec::new();
        encode_server(encoding, &envelope, &mut bytes);
        if encoding == Encoding::Json {
            prop_assert!(!bytes.contains(&b'\n'));
        }
        let decoded = decode_server(encoding, &bytes).unwrap();
        prop_assert_eq!(decoded.op.as_str(), message.op());
        prop_assert_eq!(decoded.r#ref, r#ref);
        prop_assert_eq!(decoded.offset, offset);
        prop_assert_eq!(decoded.to_message(), Ok(message));
        prop_assert_eq!(decoded.topic, topic);
    }

    #[test]
    fn frames_of_many_messages_round_trip(
        encoding in encoding(),
        messages in vec((client_message(), option::of(any::<u64>())), 1..8),
    ) {
        let mut fb = FrameBuilder::new(encoding, usize::MAX);
        let mut expected = Vec::new();
        for (message, r#ref) in messages {
            let envelope = ClientEnvelope { r#ref, message };
            let mut bytes = Vec::new();
            encode_client(encoding, &envelope, &mut bytes);
            fb.push(&bytes).unwrap();
            expected.push(Ok(envelope));
        }
        let mut frame = fb.into_inner();
        let decoded: Vec<_> = decode_client_frame(encoding, &mut frame, usize::MAX).collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic(encoding in encoding(), bytes in vec(any::<u8>(), 0..256)) {
        let _ = decode_client(encoding, &mut bytes.clone(), 1024);
        let _ = decode_client_frame(encoding, &mut bytes.clone(), 1024).count();
        let _ = decode_server(encoding, &bytes);
        let _ = split_server_frame(encoding, &bytes);
        let topic = Topic::parse("channel:1").unwrap();
        let _ = Publication::from_backend_payload(topic, &mut bytes.clone(), 1024);
        let _ = Publication::from_admin_body(&mut bytes.clone(), 1024);
    }

    /// Mutations of valid messages reach deeper into the decoders than random bytes do.
    #[test]
    fn mutated_messages_never_panic(
        encoding in encoding(),
        message in client_message(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = Vec::new();
        encode_client(encoding, &ClientEnvelope { r#ref: Some(1), message }, &mut bytes);
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        let cut = cut.index(bytes.len() + 1);
        let _ = decode_client(encoding, &mut bytes.clone(), 1 << 16);
        let _ = decode_client(encoding, &mut bytes[..cut].to_vec(), 1 << 16);
        let _ = decode_client_frame(encoding, &mut bytes.clone(), 1 << 16).count();
        let _ = decode_server(encoding, &bytes);
    }

    #[test]
    fn publications_encode_valid_messages(
        d in prop_oneof![
            Just(serde_json::json!(null)),
            text().prop_map(serde_json::Value::from),
            btree_map(text(), any::<i64>(), 0..4).prop_map(|m| serde_json::json!(m)),
        ],
        offset in option::of(any::<u64>()),
        op in "[^\u{0}]{1,40}|[\u{0}-\u{7f}]{1,300}",
        forms in prop_oneof![
            Just(EncodingSet::JSON),
            Just(EncodingSet::MSGPACK),
            Just(EncodingSet::ALL),
        ],
    ) {
        let topic = Topic::parse("channel:1").unwrap();
        let mut payload = serde_json::to_vec(&serde_json::json!({"op": op, "d": d})).unwrap();
        let mut all = payload.clone();
        let mut p =
            Publication::from_backend_payload_in(topic.clone(), &mut payload, 1 << 16, forms)
                .unwrap();
        let mut both =
            Publication::from_backend_payload_in(topic, &mut all, 1 << 16, EncodingSet::ALL)
                .unwrap();
        prop_assert_eq!(p.d_forms(), forms);
        if let Some(o) = offset {
            p = p.with_position(o, "e".into());
            both = both.with_position(o, "e".into());
        }
        for encoding in Encoding::ALL {
            let bytes = p.encode(encoding);
            // A form converted on use is the form made at decode time.
            prop_assert_eq!(&bytes, &both.encode(encoding));
            let decoded = decode_server(encoding, &bytes).unwrap();
            prop_assert_eq!(decoded.op.as_str(), op.as_str());
            prop_assert_eq!(decoded.topic.as_deref(), Some("channel:1"));
            prop_assert_eq!(decoded.offset, offset);
            prop_assert_eq!(&decoded.d, &d);
            // The room left in front is the one for the message's actual size, even where
            // escapes in `op` made it longer than computed.
            let header = |len: usize| match len {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            };
            let (framed, room) = p.encode_with_headroom(encoding, header);
            prop_assert_eq!(room, header(bytes.len()));
            prop_assert_eq!(&framed[room..], &bytes[..]);
        }
    }
}

#[test]
fn since_map_keeps_u64_max() {
    let envelope = ClientEnvelope {
        r#ref: Some(u64::MAX),
        message: ClientMessage::Subscribe {
            topics: vec![],
            since: Some(BTreeMap::from([(
                "t".to_string(),
                coregate_protocol::StreamPosition {
                    offset: u64::MAX,
                    epoch: "e".into(),
                },
            )])),
        },
    };
    for encoding in Encoding::ALL {
        let mut bytes = Vec::new();
        encode_client(encoding, &envelope, &mut bytes);
        assert_eq!(
            decode_client(encoding, &mut bytes, 1024),
            Ok(envelope.clone())
        );
    }
}
