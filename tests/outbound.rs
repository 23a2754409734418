//! End-to-end tests of the outbound path and limits: batching, slow consumers,
//! rate limits, drain on SIGTERM, metrics.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{token, Client, Gateway};
use coregate_protocol::{ClientMessage, Encoding};
use serde_json::json;

#[tokio::test]
async fn events_published_together_are_batched_into_fewer_frames() {
    let gw = Gateway::start(&["--shards", "1"]);
    let mut client = Client::ready(&gw, &token("ann", &["channel:*"]), Encoding::Json).await;
    client.subscribe(&["channel:batch"]).await;
    let frames_before = client.frames;
    let publishes = (0..50).map(|i| {
        let admin = gw.admin;
        tokio::spawn(async move {
            let body =
                json!({"topic": "channel:batch", "op": "message_new", "d": {"i": i}}).to_string();
            common::http(admin, "POST", "/publish", &body).await.0
        })
    });
    for publish in publishes.collect::<Vec<_>>() {
        assert_eq!(publish.await.unwrap(), 202);
    }
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen.push(
            client.expect_op("message_new").await.d["i"]
                .as_u64()
                .unwrap(),
        );
    }
    seen.sort();
    assert_eq!(seen, (0..50).collect::<Vec<u64>>());
    let frames = client.frames - frames_before;
    assert!(frames < 50, "50 events came in {frames} frames");
}

#[tokio::test]
async fn batch_delay_joins_events_published_apart_into_one_frame() {
    let gw = Gateway::start(&["--shards", "1", "--batch-delay", "300ms"]);
    let mut client = Client::ready(&gw, &token("ann", &["channel:*"]), Encoding::Json).await;
    client.subscribe(&["channel:slowly"]).await;
    let frames_before = client.frames;
    // Published one after another, each answered before the next is sent: without a
    // batch delay every event would go out alone.
    for i in 0..5 {
        let body =
            json!({"topic": "channel:slowly", "op": "message_new", "d": {"i": i}}).to_string();
        assert_eq!(
            common::http(gw.admin, "POST", "/publish", &body).await.0,
            202
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..5 {
        assert_eq!(client.expect_op("message_new").await.d["i"], i);
    }
    let frames = client.frames - frames_before;
    assert!(
        frames <= 2,
        "5 events within one delay came in {frames} frames"
    );
}

#[tokio::test]
async fn a_pong_overtakes_a_full_normal_lane() {
    let gw = Gateway::start(&["--shards", "1", "--outbound-budget", "16777216"]);
    let t = token("busy", &["channel:*"]);
    let mut client = Client::ready_with_small_receive_buffer(&gw, &t, Encoding::Json).await;
    client.subscribe(&["channel:backlog"]).await;
    // The client reads nothing while 9 MB of events queue up behind its small window.
    const EVENTS: u64 = 300;
    let filler = "x".repeat(30_000);
    for seq in 0..EVENTS {
        let body = json!({"topic": "channel:backlog", "op": "message_new", "d": {"seq": seq, "filler": filler}});
        gw.publish(body).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.metric("coregate_outbox_high_water_bytes").await < 1_000_000.0 {
        assert!(
            Instant::now() < deadline,
            "the normal lane never filled: {} bytes",
            gw.metric("coregate_outbox_high_water_bytes").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.send(ClientMessage::Ping).await;
    let mut events_before_pong = 0;
    loop {
        let message = client.next().await.expect("open");
        match message.op.as_str() {
            "message_new" => events_before_pong += 1,
            "pong" => break,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        events_before_pong < EVENTS - 10,
        "the pong waited behind {events_before_pong} of {EVENTS} queued events"
    );
    // Nothing was shed or lost: every event still arrives after the pong.
    for _ in events_before_pong..EVENTS {
        client.expect_op("message_new").await;
    }
}

#[tokio::test]
async fn flooding_gets_rate_limited_errors_then_4008() {
    let gw = Gateway::start(&[
        "--rate-limit-burst",
        "5",
        "--rate-limit-events",
        "1",
        "--rate-limit-window",
        "60s",
    ]);
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let mut client = Client::ready(&gw, &token("flo", &["channel:*"]), encoding).await;
        for _ in 0..5 {
            client.subscribe(&["channel:1"]).await;
        }
        let r = client
            .send(ClientMessage::Subscribe {
                topics: vec!["channel:1".into()],
                since: None,
            })
            .await;
        let error = client.expect_op("error").await;
        assert_eq!(error.d["code"], json!("rate_limited"));
        assert_eq!(error.r#ref, Some(r));
        assert!(error.d["retry_after_ms"].as_u64().unwrap() > 0);
        // ping is never limited
        let r = client.send(ClientMessage::Ping).await;
        assert_eq!(client.wait_op("pong").await.r#ref, Some(r));
        for _ in 0..40 {
            client
                .send(ClientMessage::Unsubscribe {
                    topics: vec!["channel:1".into()],
                })
                .await;
        }
        assert_eq!(client.expect_close().await, 4008);
    }
}

#[tokio::test]
async fn slow_reader_is_closed_4010_while_a_healthy_one_gets_everything() {
    let gw = Gateway::start(&[
        "--shards",
        "1",
        "--outbound-budget",
        "262144",
        "--slow-client-grace",
        "1s",
    ]);
    let t = token("slow", &["channel:*"]);
    let mut slow = Client::ready_with_small_receive_buffer(&gw, &t, Encoding::Json).await;
    slow.subscribe(&["channel:flood"]).await;
    let mut healthy = Client::ready(&gw, &token("fast", &["channel:*"]), Encoding::Json).await;
    healthy.subscribe(&["channel:flood"]).await;

    const EVENTS: u64 = 400;
    let filler = "x".repeat(30_000);
    let admin = gw.admin;
    // The publisher stays at most 4 events (120 KB, under the budget) ahead of the healthy reader, so only the
    // slow reader's queue grows.
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let publisher = tokio::spawn(async move {
        for seq in 0..EVENTS {
            while seq >= *progress.borrow() + 4 {
                progress.changed().await.unwrap();
            }
            let body = json!({"topic": "channel:flood", "op": "message_new", "d": {"seq": seq, "filler": filler}});
            assert_eq!(
                common::http(admin, "POST", "/publish", &body.to_string())
                    .await
                    .0,
                202
            );
        }
    });
    let started = Instant::now();
    for expected in 0..EVENTS {
        let event = healthy.expect_op("message_new").await;
        assert_eq!(
            event.d["seq"].as_u64(),
            Some(expected),
            "no gap for the healthy client"
        );
        progress_tx.send_replace(expected + 1);
    }
    publisher.await.unwrap();
    // The slow client's queue went over budget: it is closed 4010 within the grace plus a margin.
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(8) {
        if gw
            .metric_labelled("coregate_closes_total", r#"reason="slow_consumer""#)
            .await
            >= 1.0
        {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        closed,
        "slow client not closed within {:?}",
        started.elapsed()
    );
    assert!(gw.metric("coregate_shed_events_total").await >= 0.0);
    let reconnect = slow.wait_op("reconnect").await;
    assert!(reconnect.d["retry_after_ms"].as_u64().is_some());
    assert_eq!(slow.expect_close().await, 4010);
    let r = healthy.send(ClientMessage::Ping).await;
    assert_eq!(healthy.wait_op("pong").await.r#ref, Some(r));
}

#[tokio::test]
async fn a_small_socket_send_buffer_brings_a_stalled_reader_to_4010() {
    // With `--socket-send-buffer 0` (autotuned), loopback's kernel buffers absorb this
    // whole backlog and the reader is never found slow; 16 KiB is well under the default.
    let gw = Gateway::start(&[
        "--shards",
        "1",
        "--socket-send-buffer",
        "16384",
        "--outbound-budget",
        "65536",
        "--slow-client-grace",
        "1s",
    ]);
    let mut stalled = Client::ready(&gw, &token("stalled", &["channel:*"]), Encoding::Json).await;
    stalled.subscribe(&["channel:backlog"]).await;
    let filler = "x".repeat(30_000);
    for seq in 0..100 {
        let body = json!({"topic": "channel:backlog", "op": "message_new", "d": {"seq": seq, "filler": filler}});
        assert_eq!(gw.publish(body).await, 202);
    }
    let deadline = Instant::now() + Duration::from_secs(6);
    while gw
        .metric_labelled("coregate_closes_total", r#"reason="slow_consumer""#)
        .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the stalled reader was not closed 4010"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigterm_sends_reconnect_then_1012_to_everyone_and_exits_0() {
    let mut gw = Gateway::start(&["--drain-window", "1s"]);
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(Client::ready(&gw, &token(&format!("d{i}"), &[]), Encoding::Json).await);
    }
    gw.signal_term();
    let deadline = Instant::now() + Duration::from_secs(2);
    while gw.get("/ready").await.0 != 503 {
        assert!(Instant::now() < deadline, "/ready still 200 while draining");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for client in &mut clients {
        let reconnect = client.wait_op("reconnect").await;
        assert!(reconnect.d["retry_after_ms"].as_u64().is_some());
        assert_eq!(client.expect_close().await, 1012);
    }
    // Every part ends once the shards have: within the close's linger, not after the
    // shutdown margin (5 s) that a part still holding a shard's queue would cost.
    assert_eq!(gw.wait_exit(Duration::from_secs(3)), Some(0));
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move() {
    let gw = Gateway::start(&[]);
    let (status, text) = gw.get("/metrics").await;
    assert_eq!(status, 200);
    common::assert_prometheus_text(&text);
    let accepted_before = gw.metric("coregate_upgrades_accepted_total").await;
    let deliveries_before = gw.metric("coregate_deliveries_total").await;
    let mut client = Client::ready(&gw, &token("met", &["channel:*"]), Encoding::MsgPack).await;
    client.subscribe(&["channel:m"]).await;
    gw.publish(json!({"topic": "channel:m", "op": "message_new", "d": {}}))
        .await;
    client.expect_op("message_new").await;
    assert_eq!(
        gw.metric("coregate_upgrades_accepted_total").await,
        accepted_before + 1.0
    );
    assert_eq!(
        gw.metric("coregate_deliveries_total").await,
        deliveries_before + 1.0
    );
    assert_eq!(gw.metric("coregate_connections").await, 1.0);
    assert!(gw.metric("coregate_bytes_out_total").await > 0.0);

    // Messages by class: subscribe and ping in; the event and the replies out.
    client.send(ClientMessage::Ping).await;
    client.expect_op("pong").await;
    let class = |c: &str| format!("class=\"{c}\"");
    assert_eq!(
        gw.metric_labelled("coregate_messages_in_total", &class("subscription"))
            .await,
        1.0
    );
    assert_eq!(
        gw.metric_labelled("coregate_messages_in_total", &class("control"))
            .await,
        1.0
    );
    assert_eq!(
        gw.metric_labelled("coregate_messages_out_total", &class("event"))
            .await,
        1.0
    );
    assert!(
        gw.metric_labelled("coregate_messages_out_total", &class("control"))
            .await
            >= 3.0,
        "hello, ready, subscribed, pong"
    );
    // The event's publish→write latency was observed, and the queues' high-water marks.
    assert_eq!(
        gw.metric("coregate_publish_to_write_seconds_count").await,
        1.0
    );
    assert!(gw.metric("coregate_outbox_high_water_bytes").await > 0.0);
    assert!(gw.metric("coregate_inbox_high_water_events").await >= 1.0);

    // Refused upgrades, by reason.
    let url = format!("ws://{}/ws?token=not-a-jwt", gw.ws);
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    let url = format!("ws://{}/elsewhere", gw.ws);
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    for reason in ["unauthorized", "not_found"] {
        assert_eq!(
            gw.metric_labelled(
                "coregate_upgrades_refused_total",
                &format!("reason=\"{reason}\"")
            )
            .await,
            1.0,
            "{reason}"
        );
    }
}
