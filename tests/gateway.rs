//! End-to-end tests of the gateway core: a real `coregate` process, real sockets,
//! tokio-tungstenite clients, in both encodings.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{now, sign, token, Client, ConnectError, Gateway, TokenIn, SECRET};
use coregate_protocol::{ClientMessage, Encoding};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const BOTH: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

fn topics_of(message: &coregate_protocol::DecodedServerMessage) -> Vec<String> {
    let mut topics: Vec<String> = message.d["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    topics.sort();
    topics
}

#[tokio::test]
async fn valid_token_in_query_or_header_gets_hello_then_ready() {
    let gw = Gateway::start(&[]);
    for encoding in BOTH {
        for how in [TokenIn::Query, TokenIn::Header] {
            let t = token("alice", &["channel:*"]);
            let mut client = Client::try_connect(&gw, Some(&t), how, encoding)
                .await
                .unwrap();
            let hello = client.expect_op("hello").await;
            assert_eq!(hello.d["heartbeat_interval_ms"], json!(30_000));
            let session_id = hello.d["session_id"].as_str().unwrap().to_owned();
            let ready = client.expect_op("ready").await;
            assert_eq!(ready.d["user_id"], json!("alice"));
            assert_eq!(ready.d["session_id"], json!(session_id));
            assert_eq!(topics_of(&ready), vec!["global", "user:alice"]);
        }
    }
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_before_the_upgrade() {
    let gw = Gateway::start(&[]);
    let header_none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
    let claims_b64 = {
        // {"sub":"mallory","exp":<far future>}
        use std::fmt::Write;
        let claims = format!("{{\"sub\":\"mallory\",\"exp\":{}}}", now() + 3600);
        let mut out = String::new();
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for chunk in claims.as_bytes().chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..=chunk.len() {
                let _ = out.write_char(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    };
    let cases = [
        (
            "bad signature",
            sign(
                json!({"sub": "alice", "exp": now() + 3600}),
                "some-other-secret-1234",
            ),
        ),
        (
            "expired",
            sign(json!({"sub": "alice", "exp": now() - 10}), SECRET),
        ),
        (
            "not yet valid",
            sign(
                json!({"sub": "alice", "exp": now() + 3600, "nbf": now() + 600}),
                SECRET,
            ),
        ),
        ("alg none", format!("{header_none}.{claims_b64}.")),
        ("garbage", "not-a-jwt".to_owned()),
        ("no sub", sign(json!({"exp": now() + 3600}), SECRET)),
    ];
    for encoding in BOTH {
        for how in [TokenIn::Query, TokenIn::Header] {
            for (what, bad) in &cases {
                match Client::try_connect(&gw, Some(bad), how, encoding).await {
                    Err(ConnectError::Http(status)) => {
                        assert_eq!(status, 401, "{what} via {how:?}")
                    }
                    Err(other) => panic!("{what}: {other:?}"),
                    Ok(_) => panic!("{what} via {how:?} was accepted"),
                }
            }
        }
    }
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let gw = Gateway::start(&[
        "--jwt-issuer",
        "https://auth.example",
        "--jwt-audience",
        "chat",
    ]);
    let good = sign(
        json!({"sub": "a", "exp": now() + 60, "iss": "https://auth.example", "aud": "chat"}),
        SECRET,
    );
    let wrong_iss = sign(
        json!({"sub": "a", "exp": now() + 60, "iss": "https://evil", "aud": "chat"}),
        SECRET,
    );
    let wrong_aud = sign(
        json!({"sub": "a", "exp": now() + 60, "iss": "https://auth.example", "aud": "x"}),
        SECRET,
    );
    Client::ready(&gw, &good, Encoding::Json).await;
    let missing_iss = sign(
        json!({"sub": "a", "exp": now() + 60, "aud": "chat"}),
        SECRET,
    );
    let missing_aud = sign(
        json!({"sub": "a", "exp": now() + 60, "iss": "https://auth.example"}),
        SECRET,
    );
    let wrong_auds = sign(
        json!({"sub": "a", "exp": now() + 60, "iss": "https://auth.example", "aud": ["api", "web"]}),
        SECRET,
    );
    for bad in [wrong_iss, wrong_aud, missing_iss, missing_aud, wrong_auds] {
        assert!(matches!(
            Client::try_connect(&gw, Some(&bad), TokenIn::Query, Encoding::Json).await,
            Err(ConnectError::Http(401))
        ));
    }
    // RFC 7519: `aud` may be an array (one element must match) and NumericDates may
    // have a fraction, as identity providers issue them.
    let provider_style = sign(
        json!({"sub": "a", "exp": now() as f64 + 60.5, "iat": now() as f64 - 0.25,
               "iss": "https://auth.example", "aud": ["api", "chat"]}),
        SECRET,
    );
    Client::ready(&gw, &provider_style, Encoding::Json).await;
}

#[tokio::test]
async fn array_aud_is_accepted_with_no_audience_configured() {
    let gw = Gateway::start(&[]);
    let t = sign(
        json!({"sub": "a", "exp": now() + 60, "aud": ["api", "chat"]}),
        SECRET,
    );
    Client::ready(&gw, &t, Encoding::Json).await;
}

#[tokio::test]
async fn iat_in_the_future_beyond_the_leeway_is_401() {
    let gw = Gateway::start(&["--jwt-iat-leeway", "60s"]);
    let issued = |iat: u64| sign(json!({"sub": "a", "exp": now() + 3600, "iat": iat}), SECRET);
    Client::ready(&gw, &issued(now() + 5), Encoding::Json).await;
    assert!(matches!(
        Client::try_connect(
            &gw,
            Some(&issued(now() + 600)),
            TokenIn::Query,
            Encoding::Json
        )
        .await,
        Err(ConnectError::Http(401))
    ));
}

#[tokio::test]
/// PROTOCOL.md §1 allows a `sub` of 128 bytes; its `user:<sub>` topic (133 bytes) fits
/// the 160-byte topic limit of §3.
async fn a_128_byte_sub_gets_ready_with_its_user_topic() {
    let gw = Gateway::start(&[]);
    let sub = format!("auth0|{}", "x".repeat(122));
    assert_eq!(sub.len(), 128);
    for encoding in BOTH {
        let mut client = Client::ready(&gw, &token(&sub, &[]), encoding).await;
        gw.publish(json!({"topic": format!("user:{sub}"), "op": "dm", "d": {"n": 1}}))
            .await;
        assert_eq!(client.expect_op("dm").await.d, json!({"n": 1}));
        let mut in_band = Client::connect_anonymous(&gw, encoding).await;
        in_band.expect_op("hello").await;
        in_band
            .send(ClientMessage::Identify {
                token: token(&sub, &[]),
            })
            .await;
        let ready = in_band.expect_op("ready").await;
        assert_eq!(ready.d["user_id"], json!(sub));
        assert_eq!(
            topics_of(&ready),
            vec!["global".to_owned(), format!("user:{sub}")]
        );
    }
    let too_long = token(&"x".repeat(129), &[]);
    assert!(matches!(
        Client::try_connect(&gw, Some(&too_long), TokenIn::Query, Encoding::Json).await,
        Err(ConnectError::Http(401))
    ));
}

#[tokio::test]
async fn unknown_subprotocol_is_400_and_none_means_json() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let gw = Gateway::start(&[]);
    let t = token("bob", &[]);
    let mut request = gw
        .url(&format!("?token={t}"))
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    assert!(matches!(
        Client::connect_request(request, Encoding::Json).await,
        Err(ConnectError::Http(400))
    ));
    let request = gw
        .url(&format!("?token={t}"))
        .into_client_request()
        .unwrap();
    let mut client = Client::connect_request(request, Encoding::Json)
        .await
        .unwrap();
    client.expect_op("hello").await;
    client.expect_op("ready").await;
}

#[tokio::test]
async fn identify_in_band_succeeds_or_closes_4004() {
    let gw = Gateway::start(&[]);
    for encoding in BOTH {
        let mut client = Client::connect_anonymous(&gw, encoding).await;
        client.expect_op("hello").await;
        let r = client
            .send(ClientMessage::Identify {
                token: token("carol", &[]),
            })
            .await;
        let ready = client.expect_op("ready").await;
        assert_eq!(ready.d["user_id"], json!("carol"));
        assert_eq!(ready.r#ref, Some(r), "ready echoes the identify's ref");
        // identify twice → 4005
        client
            .send(ClientMessage::Identify {
                token: token("carol", &[]),
            })
            .await;
        assert_eq!(client.expect_close().await, 4005);

        let mut client = Client::connect_anonymous(&gw, encoding).await;
        client.expect_op("hello").await;
        client
            .send(ClientMessage::Identify {
                token: "bad.token.here".into(),
            })
            .await;
        assert_eq!(client.expect_close().await, 4004);
    }
    // The identify timeout (4009) is a rule of the session, tested with a driven clock
    // in the shards crate; the sweeper that applies it over real sockets is proven by
    // the heartbeat test below.
}

#[tokio::test]
async fn ops_before_ready_close_4003_but_ping_is_answered() {
    let gw = Gateway::start(&[]);
    for encoding in BOTH {
        let mut client = Client::connect_anonymous(&gw, encoding).await;
        client.expect_op("hello").await;
        let r = client.send(ClientMessage::Ping).await;
        assert_eq!(client.expect_op("pong").await.r#ref, Some(r));
        client
            .send(ClientMessage::Subscribe {
                topics: vec!["global".into()],
                since: None,
            })
            .await;
        assert_eq!(client.expect_close().await, 4003);
    }
}

#[tokio::test]
async fn subscribe_allowed_forbidden_mixed_and_over_limit() {
    let gw = Gateway::start(&["--max-subscriptions", "4"]);
    for encoding in BOTH {
        let mut client =
            Client::ready(&gw, &token("dave", &["channel:*", "server:1"]), encoding).await;
        // allowed
        let reply = client.subscribe(&["channel:1"]).await;
        assert_eq!(topics_of(&reply), vec!["channel:1"]);
        // mixed: allowed ones subscribed, forbidden ones in one error
        let r = client
            .send(ClientMessage::Subscribe {
                topics: vec!["server:2".into(), "server:1".into(), "user:eve".into()],
                since: None,
            })
            .await;
        let subscribed = client.expect_op("subscribed").await;
        assert_eq!(subscribed.r#ref, Some(r));
        assert_eq!(topics_of(&subscribed), vec!["server:1"]);
        let error = client.expect_op("error").await;
        assert_eq!(error.r#ref, Some(r));
        assert_eq!(error.d["code"], json!("forbidden"));
        let mut forbidden = topics_of(&error);
        forbidden.sort();
        assert_eq!(forbidden, vec!["server:2", "user:eve"]);
        // only forbidden: no `subscribed`, just the error
        let r = client
            .send(ClientMessage::Subscribe {
                topics: vec!["server:9".into()],
                since: None,
            })
            .await;
        let error = client.expect_op("error").await;
        assert_eq!(
            (error.r#ref, error.d["code"].clone()),
            (Some(r), json!("forbidden"))
        );
        // over the limit: 4 allowed = user, global, channel:1, server:1 already
        let r = client
            .send(ClientMessage::Subscribe {
                topics: vec!["channel:2".into()],
                since: None,
            })
            .await;
        let error = client.expect_op("error").await;
        assert_eq!(
            (error.r#ref, error.d["code"].clone()),
            (Some(r), json!("limit"))
        );
        assert_eq!(topics_of(&error), vec!["channel:2"]);
    }
}

#[tokio::test]
async fn one_subscribe_gets_forbidden_invalid_topic_and_limit_at_once() {
    // Room for one topic besides `user:<sub>` and `global`.
    let gw = Gateway::start(&["--max-subscriptions", "3"]);
    for encoding in BOTH {
        let mut client = Client::ready(&gw, &token("erin", &["channel:*"]), encoding).await;
        let requested = [
            "channel:1",
            "server:9",
            "no spaces",
            "channel:2",
            "channel:3",
        ];
        let r = client
            .send(ClientMessage::Subscribe {
                topics: requested.iter().map(|t| t.to_string()).collect(),
                since: None,
            })
            .await;
        let subscribed = client.expect_op("subscribed").await;
        assert_eq!(subscribed.r#ref, Some(r));
        assert_eq!(topics_of(&subscribed), vec!["channel:1"]);
        let mut refusals = Vec::new();
        for _ in 0..3 {
            let error = client.expect_op("error").await;
            assert_eq!(error.r#ref, Some(r));
            refusals.push((error.d["code"].clone(), topics_of(&error)));
        }
        assert_eq!(
            refusals,
            [
                (json!("forbidden"), vec!["server:9".to_owned()]),
                (json!("invalid_topic"), vec!["no spaces".to_owned()]),
                (
                    json!("limit"),
                    vec!["channel:2".to_owned(), "channel:3".to_owned()]
                ),
            ]
        );
    }
}

#[tokio::test]
async fn publish_reaches_exactly_the_subscribers_on_every_shard_and_skips_exclude_user() {
    let gw = Gateway::start(&[]);
    let mut subscribers = Vec::new();
    for i in 0..16 {
        let encoding = BOTH[i % 2];
        let mut client =
            Client::ready(&gw, &token(&format!("u{i}"), &["channel:*"]), encoding).await;
        client.subscribe(&["channel:room"]).await;
        subscribers.push(client);
    }
    let mut outsider = Client::ready(&gw, &token("outsider", &["channel:*"]), Encoding::Json).await;
    outsider.subscribe(&["channel:other"]).await;
    // The kernel spread the connections: both shards hold subscribers.
    let (_, metrics) = gw.get("/metrics").await;
    let per_shard = common::metric_samples(&metrics, "coregate_connections");
    assert_eq!(per_shard.len(), 2, "{metrics}");
    assert!(
        per_shard.iter().all(|(_, n)| *n > 0.0),
        "connections per shard: {per_shard:?}"
    );

    let status = gw
        .publish(json!({"topic": "channel:room", "op": "message_new", "d": {"text": "hi"}, "exclude_user": "u3"}))
        .await;
    assert_eq!(status, 202);
    for (i, client) in subscribers.iter_mut().enumerate() {
        if i == 3 {
            continue;
        }
        let event = client.expect_op("message_new").await;
        assert_eq!(event.topic.as_deref(), Some("channel:room"));
        assert_eq!(event.d, json!({"text": "hi"}));
    }
    subscribers[3]
        .expect_silence(Duration::from_millis(300))
        .await;
    outsider.expect_silence(Duration::from_millis(100)).await;
    // user:<sub> reaches that user only; global reaches everyone.
    gw.publish(json!({"topic": "user:u5", "op": "incoming_call", "d": {}}))
        .await;
    assert_eq!(
        subscribers[5]
            .expect_op("incoming_call")
            .await
            .topic
            .as_deref(),
        Some("user:u5")
    );
    gw.publish(json!({"topic": "global", "op": "announcement", "d": {"n": 1}}))
        .await;
    for client in subscribers.iter_mut().chain(std::iter::once(&mut outsider)) {
        client.expect_op("announcement").await;
    }
    subscribers[4]
        .expect_silence(Duration::from_millis(100))
        .await;
}

#[tokio::test]
async fn bad_publish_bodies_are_400() {
    let gw = Gateway::start(&[]);
    assert_eq!(
        gw.publish(json!({"op": "x", "d": {}})).await,
        400,
        "no topic"
    );
    assert_eq!(
        gw.publish(json!({"topic": "bad topic", "op": "x", "d": {}}))
            .await,
        400
    );
    assert_eq!(
        common::http(gw.admin, "POST", "/publish", "{not json")
            .await
            .0,
        400
    );
    assert_eq!(gw.get("/health").await.0, 200);
    assert_eq!(gw.get("/ready").await.0, 200);
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let gw = Gateway::start(&[]);
    for encoding in BOTH {
        let mut client = Client::ready(&gw, &token("fay", &["channel:*"]), encoding).await;
        client.subscribe(&["channel:news"]).await;
        gw.publish(json!({"topic": "channel:news", "op": "message_new", "d": {"n": 1}}))
            .await;
        assert_eq!(client.expect_op("message_new").await.d, json!({"n": 1}));
        let r = client
            .send(ClientMessage::Unsubscribe {
                topics: vec!["channel:news".into()],
            })
            .await;
        let reply = client.expect_op("unsubscribed").await;
        assert_eq!(reply.r#ref, Some(r));
        assert_eq!(topics_of(&reply), vec!["channel:news"]);
        gw.publish(json!({"topic": "channel:news", "op": "message_new", "d": {"n": 2}}))
            .await;
        client.expect_silence(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
/// The one end-to-end case that waits on real time: it proves that the shard's sweeper
/// gives the sessions the clock. Every other deadline (identify, token expiry, slow
/// consumer grace) is tested in the shards crate with a driven clock.
async fn ping_pong_and_heartbeat_timeout() {
    let gw = Gateway::start(&["--heartbeat-interval", "1s"]);
    for encoding in [Encoding::Json] {
        let mut silent = Client::ready(&gw, &token("gus", &[]), encoding).await;
        let mut pinging = Client::ready(&gw, &token("hal", &[]), encoding).await;
        let started = std::time::Instant::now();
        let keep_alive = async {
            for _ in 0..6 {
                let r = pinging.send(ClientMessage::Ping).await;
                assert_eq!(pinging.expect_op("pong").await.r#ref, Some(r));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            pinging
        };
        let (code, mut pinging) = tokio::join!(
            silent.expect_close_within(Duration::from_secs(5)),
            keep_alive
        );
        assert_eq!(code, 4009);
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "closed after {:?}",
            started.elapsed()
        );
        let r = pinging.send(ClientMessage::Ping).await;
        assert_eq!(
            pinging.expect_op("pong").await.r#ref,
            Some(r),
            "the pinging client lives on"
        );
    }
}

#[tokio::test]
async fn garbage_and_unknown_ops_get_errors_and_the_connection_lives() {
    let gw = Gateway::start(&[]);
    for encoding in BOTH {
        let mut client = Client::ready(&gw, &token("ivy", &[]), encoding).await;
        let garbage: Vec<u8> = match encoding {
            Encoding::Json => b"{this is not json".to_vec(),
            Encoding::MsgPack => vec![0xc1, 0xff, 0x00],
        };
        client.send_raw(garbage).await;
        assert_eq!(
            client.expect_op("error").await.d["code"],
            json!("bad_request")
        );
        let unknown = match encoding {
            Encoding::Json => br#"{"op":"teleport","ref":77,"d":{}}"#.to_vec(),
            // {"op": "teleport", "ref": 77}
            Encoding::MsgPack => {
                let mut v = vec![0x82, 0xa2, b'o', b'p', 0xa8];
                v.extend_from_slice(b"teleport");
                v.extend_from_slice(&[0xa3, b'r', b'e', b'f', 77]);
                v
            }
        };
        client.send_raw(unknown).await;
        let error = client.expect_op("error").await;
        assert_eq!(error.d["code"], json!("unknown_op"));
        assert_eq!(error.r#ref, Some(77));
        let r = client.send(ClientMessage::Ping).await;
        assert_eq!(client.expect_op("pong").await.r#ref, Some(r));
    }
}

#[tokio::test]
async fn two_messages_in_one_frame_are_both_handled() {
    let gw = Gateway::start(&[]);
    let mut client = Client::ready(&gw, &token("jo", &[]), Encoding::Json).await;
    client
        .send_raw(
            br#"{"op":"ping","ref":1}
{"op":"ping","ref":2}"#
                .to_vec(),
        )
        .await;
    assert_eq!(client.expect_op("pong").await.r#ref, Some(1));
    assert_eq!(client.expect_op("pong").await.r#ref, Some(2));
}

#[tokio::test]
/// `refresh` through the real JWT verifier; what expiry and refresh do to the
/// connection's deadline is tested with a driven clock in the shards crate.
async fn refresh_takes_a_new_token_of_the_same_user_only() {
    let gw = Gateway::start(&[]);
    for encoding in BOTH {
        let short = sign(json!({"sub": "lee", "exp": now() + 60}), SECRET);
        let mut refreshed = Client::ready(&gw, &short, encoding).await;
        let r = refreshed
            .send(ClientMessage::Refresh {
                token: token("someone-else", &[]),
            })
            .await;
        let error = refreshed.expect_op("error").await;
        assert_eq!(
            (error.r#ref, error.d["code"].clone()),
            (Some(r), json!("invalid_token"))
        );
        let later = now() + 3600;
        let r = refreshed
            .send(ClientMessage::Refresh {
                token: sign(json!({"sub": "lee", "exp": later}), SECRET),
            })
            .await;
        let reply = refreshed.expect_op("refreshed").await;
        assert_eq!(
            (reply.r#ref, reply.d["exp"].clone()),
            (Some(r), json!(later))
        );
    }
}

#[tokio::test]
async fn oversize_message_closes_1009() {
    let gw = Gateway::start(&["--max-message-size", "1024"]);
    let mut client = Client::ready(&gw, &token("max", &[]), Encoding::Json).await;
    client
        .send_message(Message::Text("x".repeat(2048).into()))
        .await;
    assert_eq!(client.expect_close().await, 1009);
}

#[tokio::test]
async fn websocket_ping_is_answered() {
    let gw = Gateway::start(&[]);
    let mut client = Client::ready(&gw, &token("ned", &[]), Encoding::MsgPack).await;
    client
        .send_message(Message::Ping(b"hb".to_vec().into()))
        .await;
    // tokio-tungstenite surfaces the pong; then an app-level ping still works.
    let r = client.send(ClientMessage::Ping).await;
    assert_eq!(client.expect_op("pong").await.r#ref, Some(r));
}
