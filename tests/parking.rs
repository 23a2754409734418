//! End-to-end: idle connections park (give their task up, their socket waits in the
//! shard's epoll set) and come back for whatever concerns them: an event, a ping, a
//! close from the sweeper or the drain, the peer leaving. Parking is the driver's
//! business (`shards/src/driver/parking.rs`); the session rules it must not change are
//! unit-tested in the shards crate, so this proves the wiring on a real process, with
//! `coregate_parked_connections` telling when a connection is parked.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{token, Client, Gateway, Launch};
use coregate_protocol::{ClientMessage, Encoding};
use serde_json::json;

/// Parking takes one to two rounds (1 s each) of quiet; this leaves room for a busy
/// machine.
const PARK_LIMIT: Duration = Duration::from_secs(10);

/// Waits until `parked` connections are parked, or fails after [`PARK_LIMIT`].
async fn wait_parked(gw: &Gateway, parked: f64) {
    gw.wait_metric("coregate_parked_connections", parked, PARK_LIMIT)
        .await;
}

#[tokio::test]
async fn a_new_connection_waits_parked_and_its_first_message_unparks_it() {
    let gw = Gateway::start(&[]);
    let mut client = Client::ready(&gw, &token("pia", &["channel:*"]), Encoding::Json).await;
    // Greeted, with nothing to do: parked at its first wait, not after a round.
    wait_parked(&gw, 1.0).await;
    // Its subscribe is read and answered (`subscribe` asserts the reply).
    client.subscribe(&["channel:p"]).await;
    gw.publish(json!({"topic": "channel:p", "op": "message_new", "d": {"n": 1}}))
        .await;
    client.expect_op("message_new").await;
}

#[tokio::test]
async fn a_connection_quiet_for_a_round_parks_and_still_gets_events_and_pongs() {
    let gw = Gateway::start(&["--shards", "1"]);
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let mut client = Client::ready(&gw, &token("pat", &["channel:*"]), encoding).await;
        client.subscribe(&["channel:q"]).await;
        for n in 0..3 {
            wait_parked(&gw, 1.0).await;
            // Output queued by the hub unparks it.
            gw.publish(json!({"topic": "channel:q", "op": "message_new", "d": {"n": n}}))
                .await;
            let event = client.expect_op("message_new").await;
            assert_eq!(event.d["n"], n);
            wait_parked(&gw, 1.0).await;
            // Input on its socket unparks it.
            let r = client.send(ClientMessage::Ping).await;
            assert_eq!(client.expect_op("pong").await.r#ref, Some(r));
        }
        drop(client);
        wait_parked(&gw, 0.0).await;
    }
}

#[tokio::test]
async fn a_parked_connection_that_stops_pinging_is_closed_4009() {
    let gw = Gateway::start(&["--heartbeat-interval", "3s"]);
    let mut client = Client::ready(&gw, &token("ped", &[]), Encoding::Json).await;
    wait_parked(&gw, 1.0).await;
    // The sweeper's close unparks it, and the close gets out.
    assert_eq!(
        client.expect_close_within(Duration::from_secs(10)).await,
        4009
    );
}

#[tokio::test]
async fn a_peer_that_leaves_while_parked_is_removed() {
    let gw = Gateway::start(&[]);
    let clients = [
        Client::ready(&gw, &token("pam", &[]), Encoding::Json).await,
        Client::ready(&gw, &token("pal", &[]), Encoding::MsgPack).await,
    ];
    wait_parked(&gw, 2.0).await;
    drop(clients);
    gw.wait_metric("coregate_connections", 0.0, PARK_LIMIT)
        .await;
    assert_eq!(gw.metric("coregate_parked_connections").await, 0.0);
}

#[tokio::test]
async fn a_drain_closes_parked_connections_with_1012() {
    let mut gw = Launch::new(&["--drain-window", "200ms"]).start();
    let mut clients = Vec::new();
    for user in ["pez", "pip", "pod"] {
        clients.push(Client::ready(&gw, &token(user, &[]), Encoding::Json).await);
    }
    wait_parked(&gw, 3.0).await;
    gw.signal_term();
    for client in &mut clients {
        assert_eq!(
            client.expect_close_within(Duration::from_secs(5)).await,
            1012
        );
    }
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
}
