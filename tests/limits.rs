//! End-to-end tests of the admission limits: per user, per IP address, per node.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{token, Client, ConnectError, Gateway, TokenIn};
use coregate_protocol::{ClientMessage, Encoding};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends a bare WebSocket upgrade request and returns the response's head.
async fn raw_upgrade(gw: &Gateway, query: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(gw.ws).await.unwrap();
    let request = format!(
        "GET /ws{query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        gw.ws
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before answering");
        response.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn a_user_over_its_connection_limit_gets_429_at_upgrade_or_4011_after_identify() {
    let gw = Gateway::start(&["--max-connections-per-user", "2"]);
    let alice = token("alice", &[]);
    let first = Client::ready(&gw, &alice, Encoding::Json).await;
    let _second = Client::ready(&gw, &alice, Encoding::MsgPack).await;
    for how in [TokenIn::Query, TokenIn::Header] {
        assert!(matches!(
            Client::try_connect(&gw, Some(&alice), how, Encoding::Json).await,
            Err(ConnectError::Http(429))
        ));
    }
    // In-band identify: the upgrade succeeds, the identify is refused with 4011.
    let mut late = Client::try_connect(&gw, None, TokenIn::Query, Encoding::Json)
        .await
        .unwrap();
    late.expect_op("hello").await;
    late.send(ClientMessage::Identify {
        token: alice.clone(),
    })
    .await;
    assert_eq!(late.expect_close().await, 4011);
    // Another user is not affected.
    Client::ready(&gw, &token("bob", &[]), Encoding::Json).await;
    assert_eq!(
        gw.metric_labelled("coregate_upgrades_refused_total", r#"reason="user_limit""#)
            .await,
        2.0
    );
    // A closed connection gives its place back.
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        if let Ok(client) =
            Client::try_connect(&gw, Some(&alice), TokenIn::Query, Encoding::Json).await
        {
            again = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    again
        .expect("the place was given back")
        .wait_op("ready")
        .await;
}

#[tokio::test]
async fn connection_attempts_over_an_addresss_rate_get_429_with_retry_after() {
    let gw = Gateway::start(&["--ip-connect-rate", "1", "--ip-connect-burst", "3"]);
    for i in 0..3 {
        Client::ready(&gw, &token(&format!("u{i}"), &[]), Encoding::Json).await;
    }
    let head = raw_upgrade(&gw, &format!("?token={}", token("u9", &[]))).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert!(head.contains("Retry-After: 1\r\n"), "{head}");
    assert_eq!(
        gw.metric_labelled("coregate_upgrades_refused_total", r#"reason="ip_rate""#)
            .await,
        1.0
    );
    // The bucket refills at the configured rate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    Client::ready(&gw, &token("u9", &[]), Encoding::Json).await;
}

#[tokio::test]
async fn a_full_node_answers_503_with_retry_after() {
    let gw = Gateway::start(&["--max-connections", "2"]);
    let first = Client::ready(&gw, &token("a", &[]), Encoding::Json).await;
    let _second = Client::ready(&gw, &token("b", &[]), Encoding::Json).await;
    let head = raw_upgrade(&gw, &format!("?token={}", token("c", &[]))).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.contains("Retry-After: "), "{head}");
    drop(first);
    let mut admitted = false;
    for _ in 0..50 {
        if raw_upgrade(&gw, &format!("?token={}", token("c", &[])))
            .await
            .starts_with("HTTP/1.1 101")
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted, "a closed connection gives its place back");
}
