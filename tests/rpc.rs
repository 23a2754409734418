//! End to end: a client's `rpc` goes to a real HTTP backend (an axum server started by
//! the test) and its answer comes back (docs/protocol.md §8); failures, the timeout, the
//! in-flight cap, the method allow-list and the rate limit, against a real gateway.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use common::{token, Client, Gateway};
use coregate_protocol::{ClientMessage, Encoding};
use serde_json::{json, Value};

/// What the backend saw: each call's body and headers.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(Value, HeaderMap)>>>);

impl Seen {
    fn calls(&self) -> Vec<(Value, HeaderMap)> {
        self.0.lock().unwrap().clone()
    }
}

/// The backend's answers, by method: `echo` answers `{d: {echo: d}}`, `fail` answers
/// the backend's own error, `slow` never answers, `status` answers HTTP 500.
async fn backend_rpc(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    seen.0.lock().unwrap().push((body.clone(), headers));
    let ok = axum::http::StatusCode::OK;
    match body["method"].as_str().unwrap_or("") {
        "echo" => (ok, Json(json!({"d": {"echo": body["d"]}}))),
        "fail" => (
            ok,
            Json(json!({"error": {"code": "message_too_long", "message": "at most 2000"}})),
        ),
        "slow" => std::future::pending().await,
        _ => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({})),
        ),
    }
}

/// A backend on a free port; its URL and what it sees.
async fn backend() -> (String, Seen) {
    let seen = Seen::default();
    let app = axum::Router::new()
        .route("/rpc", axum::routing::post(backend_rpc))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/rpc"), seen)
}

async fn rpc(client: &mut Client, method: &str, d: Value) -> u64 {
    client
        .send(ClientMessage::Rpc {
            method: method.to_owned(),
            d,
        })
        .await
}

#[tokio::test]
async fn an_rpc_round_trips_through_the_backend_with_its_ref_in_both_encodings() {
    let (url, seen) = backend().await;
    let gw = Gateway::start(&["--proxy-rpc-url", &url, "--proxy-secret", "s3cret"]);
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let mut alice = Client::ready(&gw, &token("alice", &[]), encoding).await;
        let d = json!({"text": "hi", "client_message_id": "c1", "n": [1, 2]});
        let r#ref = rpc(&mut alice, "echo", d.clone()).await;
        let result = alice.wait_op("rpc_result").await;
        assert_eq!(result.r#ref, Some(r#ref));
        assert_eq!(result.d["d"], json!({"echo": d}));
    }
    let calls = seen.calls();
    assert_eq!(calls.len(), 2);
    let (body, headers) = &calls[0];
    assert_eq!(body["user_id"], "alice");
    assert_eq!(body["method"], "echo");
    assert!(body["session_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(headers["x-coregate-secret"], "s3cret");
    assert!(!headers["x-request-id"].is_empty());
    assert_ne!(headers["x-request-id"], calls[1].1["x-request-id"]);
    assert_eq!(
        calls[1].0["d"], calls[0].0["d"],
        "MessagePack's d reaches the backend as JSON"
    );
    assert_eq!(
        gw.metric_labelled("coregate_backend_calls_total", r#"kind="rpc",outcome="ok""#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn backend_errors_pass_through_and_failures_are_unavailable() {
    let (url, _seen) = backend().await;
    let gw = Gateway::start(&["--proxy-rpc-url", &url]);
    let mut alice = Client::ready(&gw, &token("alice", &[]), Encoding::Json).await;
    let r#ref = rpc(&mut alice, "fail", json!({})).await;
    let error = alice.wait_op("error").await;
    assert_eq!(error.r#ref, Some(r#ref));
    assert_eq!(error.d["code"], "message_too_long");
    assert_eq!(error.d["message"], "at most 2000");
    // An HTTP error status: the gateway could not get an answer.
    rpc(&mut alice, "status", json!({})).await;
    assert_eq!(alice.wait_op("error").await.d["code"], "unavailable");
    // No backend configured at all.
    let bare = Gateway::start(&[]);
    let mut bob = Client::ready(&bare, &token("bob", &[]), Encoding::Json).await;
    let r#ref = rpc(&mut bob, "echo", json!(1)).await;
    let error = bob.wait_op("error").await;
    assert_eq!(error.r#ref, Some(r#ref));
    assert_eq!(error.d["code"], "unavailable");
    // A backend that is down.
    let down = Gateway::start(&["--proxy-rpc-url", "http://127.0.0.1:9/rpc"]);
    let mut carol = Client::ready(&down, &token("carol", &[]), Encoding::Json).await;
    rpc(&mut carol, "echo", json!(1)).await;
    assert_eq!(carol.wait_op("error").await.d["code"], "unavailable");
}

#[tokio::test]
async fn a_slow_backend_times_out_unavailable_and_pings_keep_their_latency_meanwhile() {
    let (url, _seen) = backend().await;
    let gw = Gateway::start(&[
        "--proxy-rpc-url",
        &url,
        "--proxy-timeout",
        "1s",
        "--rpc-max-in-flight",
        "2",
    ]);
    let mut alice = Client::ready(&gw, &token("alice", &[]), Encoding::Json).await;
    let sent = Instant::now();
    let first = rpc(&mut alice, "slow", json!({})).await;
    rpc(&mut alice, "slow", json!({})).await;
    // The in-flight cap: a third call is refused at once.
    let third = rpc(&mut alice, "slow", json!({})).await;
    let error = alice.wait_op("error").await;
    assert_eq!(
        (error.r#ref, error.d["code"].as_str()),
        (Some(third), Some("limit"))
    );
    // The shard is not held by the calls: pings are answered at once meanwhile.
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let at = Instant::now();
        alice.send(ClientMessage::Ping).await;
        alice.wait_op("pong").await;
        worst = worst.max(at.elapsed());
    }
    assert!(worst < Duration::from_millis(200), "a ping took {worst:?}");
    let error = alice.wait_op("error").await;
    assert_eq!(error.r#ref, Some(first));
    assert_eq!(error.d["code"], "unavailable");
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2_500),
        "answered after {waited:?}"
    );
}

#[tokio::test]
async fn the_method_allow_list_and_the_rate_limit_refuse_before_the_backend() {
    let (url, seen) = backend().await;
    let gw = Gateway::start(&[
        "--proxy-rpc-url",
        &url,
        "--proxy-rpc-methods",
        "echo",
        "--rate-limit-burst",
        "5",
        "--rate-limit-events",
        "1",
    ]);
    let mut alice = Client::ready(&gw, &token("alice", &[]), Encoding::Json).await;
    let r#ref = rpc(&mut alice, "fail", json!({})).await;
    let error = alice.wait_op("error").await;
    assert_eq!(
        (error.r#ref, error.d["code"].as_str()),
        (Some(r#ref), Some("forbidden"))
    );
    // 20 calls at once: the burst's rest reaches the backend, the others are refused
    // (fewer than the 20 refusals in a row that close a flood 4008).
    for _ in 0..20 {
        rpc(&mut alice, "echo", json!({})).await;
    }
    let mut results = 0;
    let mut limited = 0;
    while results + limited < 20 {
        let message = alice.next().await.unwrap();
        match message.op.as_str() {
            "rpc_result" => results += 1,
            "error" if message.d["code"] == "rate_limited" => limited += 1,
            other => panic!("unexpected {other}: {message:?}"),
        }
    }
    assert!(
        results <= 4,
        "{results} calls passed a burst of 5 (one spent)"
    );
    assert_eq!(
        seen.calls().len(),
        results,
        "the refused calls never reached it"
    );
}
