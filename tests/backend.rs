//! End to end: the calls to the application backend (docs/protocol.md §8) against a real
//! HTTP backend (an axum server started by the test) and a real gateway. `rpc`: the round
//! trip, failures, the timeout, the in-flight cap, the method allow-list and the rate
//! limit. Connect: cookie sessions, tokens, `ready.d.data`, refusals before and after the
//! upgrade, a backend that is down. Subscribe (`--authorizer proxy`): allow, deny, the
//! cache, a backend that is down.
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

/// One call the backend received: its path, body and headers.
type Call = (&'static str, Value, HeaderMap);

/// What the backend saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Call>>>);

impl Seen {
    /// The calls to `path`: body and headers.
    fn calls_to(&self, path: &str) -> Vec<(Value, HeaderMap)> {
        let calls = self.0.lock().unwrap();
        calls
            .iter()
            .filter(|(p, _, _)| *p == path)
            .map(|(_, body, headers)| (body.clone(), headers.clone()))
            .collect()
    }
    fn calls(&self) -> Vec<(Value, HeaderMap)> {
        self.calls_to("rpc")
    }
    fn record(&self, path: &'static str, body: &Value, headers: HeaderMap) {
        self.0.lock().unwrap().push((path, body.clone(), headers));
    }
}

/// The backend's answers, by method: `echo` answers `{d: {echo: d}}`, `fail` answers
/// the backend's own error, `slow` never answers, `status` answers HTTP 500.
async fn backend_rpc(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    seen.record("rpc", &body, headers);
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

/// The backend's connect decisions: the cookie `sid=alice-session` is Alice (with her
/// servers as `data`); a token's user is accepted as they are, but `mallory`; anything
/// else has no session.
async fn backend_connect(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    seen.record("connect", &body, headers);
    let cookie = body["headers"]["cookie"].as_str().unwrap_or("");
    Json(match body["user_id"].as_str() {
        Some("mallory") => json!({"error": {"code": "banned", "message": "go away"}}),
        Some(user) => json!({"user_id": user, "data": {"via": "token"}}),
        None if cookie.contains("sid=alice-session") => json!({
            "user_id": "alice", "name": "Alice", "topics": ["channel:*"],
            "data": {"servers": [1, 2], "query": body["query"]},
            "meta": {"org": 7}
        }),
        None => json!({"error": {"code": "no_session", "message": "log in first"}}),
    })
}

/// `channel:slow-*` checks being answered now, and the most there ever were at once.
static SLOW_CHECKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static MOST_SLOW_CHECKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The backend's subscribe decisions: `channel:open` is allowed; `channel:slow-*` too,
/// after 200 ms (counting how many it answers at once); `channel:never` is never
/// answered; nothing else is allowed.
async fn backend_subscribe(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    use std::sync::atomic::Ordering::SeqCst;
    seen.record("subscribe", &body, headers);
    let topic = body["topic"].as_str().unwrap_or("");
    if topic == "channel:never" {
        std::future::pending::<()>().await;
    }
    if topic.starts_with("channel:slow-") {
        let now = SLOW_CHECKS.fetch_add(1, SeqCst) + 1;
        MOST_SLOW_CHECKS.fetch_max(now, SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        SLOW_CHECKS.fetch_sub(1, SeqCst);
        return Json(json!({"allow": true}));
    }
    let allow = topic == "channel:open";
    Json(json!({"allow": allow, "reason": "private channel"}))
}

/// A backend on a free port; its address (`http://ADDR`) and what it sees.
async fn backend_at() -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    backend_on(listener)
}

/// A backend on `listener`; its address (`http://ADDR`) and what it sees.
fn backend_on(listener: tokio::net::TcpListener) -> (String, Seen) {
    let seen = Seen::default();
    let app = axum::Router::new()
        .route("/rpc", axum::routing::post(backend_rpc))
        .route("/connect", axum::routing::post(backend_connect))
        .route("/subscribe", axum::routing::post(backend_subscribe))
        .with_state(seen.clone());
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

/// The backend's rpc URL and what it sees.
async fn backend() -> (String, Seen) {
    let (base, seen) = backend_at().await;
    (format!("{base}/rpc"), seen)
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

/// A client connecting with `cookie` and no token; the upgrade's HTTP status if refused.
async fn connect_with_cookie(gw: &Gateway, cookie: &str) -> Result<Client, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = gw.url("?room=7").into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("Cookie", cookie.parse().unwrap());
    headers.insert("X-Forwarded-For", "203.0.113.7".parse().unwrap());
    headers.insert("User-Agent", "test-agent/1".parse().unwrap());
    match Client::connect_request(request, Encoding::Json).await {
        Ok(client) => Ok(client),
        Err(common::ConnectError::Http(status)) => Err(status),
        Err(other) => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_cookie_session_is_decided_by_the_backend_and_its_data_is_in_ready() {
    let (base, seen) = backend_at().await;
    let connect_url = format!("{base}/connect");
    let rpc_url = format!("{base}/rpc");
    let gw = Gateway::start(&[
        "--proxy-connect-url",
        &connect_url,
        "--proxy-rpc-url",
        &rpc_url,
        "--proxy-secret",
        "s3",
        "--proxy-connect-headers",
        "cookie,X-Forwarded-For",
    ]);
    let mut alice = connect_with_cookie(&gw, "theme=dark; sid=alice-session")
        .await
        .unwrap();
    alice.expect_op("hello").await;
    let ready = alice.expect_op("ready").await;
    assert_eq!(ready.d["user_id"], "alice");
    assert_eq!(ready.d["data"]["servers"], json!([1, 2]));
    // The query reached the backend, the token parameter never does.
    assert_eq!(ready.d["data"]["query"], json!({"room": "7"}));
    // The backend's `topics` stand in for the claim.
    let subscribed = alice.subscribe(&["channel:9"]).await;
    assert_eq!(subscribed.op, "subscribed", "{subscribed:?}");
    // The connect call's `meta` comes back to the backend with every rpc, also after
    // a refresh; the client never sees it.
    assert_eq!(ready.d.get("meta"), None);
    let rpc = |n: u64| ClientMessage::Rpc {
        method: "echo".into(),
        d: json!(n),
    };
    alice.send(rpc(1)).await;
    alice.wait_op("rpc_result").await;
    alice
        .send(ClientMessage::Refresh {
            token: token("alice", &[]),
        })
        .await;
    alice.wait_op("refreshed").await;
    alice.send(rpc(2)).await;
    alice.wait_op("rpc_result").await;
    let metas: Vec<Value> = seen
        .calls()
        .iter()
        .map(|(b, _)| b["meta"].clone())
        .collect();
    assert_eq!(metas, [json!({"org": 7}), json!({"org": 7})]);
    let (body, headers) = seen.calls_to("connect").remove(0);
    assert_eq!(body["user_id"], Value::Null);
    assert_eq!(body["headers"]["cookie"], "theme=dark; sid=alice-session");
    // The allow-listed headers, and no other.
    assert_eq!(body["headers"]["x-forwarded-for"], "203.0.113.7");
    assert_eq!(body["headers"]["user-agent"], Value::Null);
    assert_eq!(headers["x-coregate-secret"], "s3");
    // No session: refused before the upgrade, as a bad token would be.
    assert_eq!(connect_with_cookie(&gw, "sid=stale").await.err(), Some(401));
    assert_eq!(
        gw.metric_labelled(
            "coregate_backend_calls_total",
            r#"kind="connect",outcome="refused""#
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn with_a_token_the_backend_sees_its_user_and_a_refusal_closes_4004_after_hello() {
    let (base, seen) = backend_at().await;
    let connect_url = format!("{base}/connect");
    let gw = Gateway::start(&["--proxy-connect-url", &connect_url]);
    let mut bob = Client::connect(&gw, &token("bob", &[]), Encoding::Json).await;
    bob.expect_op("hello").await;
    let ready = bob.expect_op("ready").await;
    assert_eq!(
        (ready.d["user_id"].as_str(), &ready.d["data"]),
        (Some("bob"), &json!({"via": "token"}))
    );
    assert_eq!(seen.calls_to("connect")[0].0["user_id"], "bob");
    let mut mallory = Client::connect(&gw, &token("mallory", &[]), Encoding::Json).await;
    mallory.expect_op("hello").await;
    assert_eq!(mallory.expect_close().await, 4004);
}

#[tokio::test]
async fn the_token_reaches_the_backend_only_when_configured_and_the_secret_header_is_named() {
    let (base, seen) = backend_at().await;
    let connect_url = format!("{base}/connect");
    let plain = Gateway::start(&["--proxy-connect-url", &connect_url]);
    let mut bob = Client::connect(&plain, &token("bob", &[]), Encoding::Json).await;
    bob.wait_op("ready").await;
    let (body, headers) = seen.calls_to("connect").remove(0);
    assert_eq!(
        body.get("token"),
        None,
        "forwarded without being asked: {body}"
    );
    assert!(!headers.contains_key("x-coregate-secret"));

    let (base, seen) = backend_at().await;
    let connect_url = format!("{base}/connect");
    let forwarding = Gateway::start(&[
        "--proxy-connect-url",
        &connect_url,
        "--proxy-forward-token",
        "true",
        "--proxy-secret",
        "k3y",
        "--proxy-secret-header",
        "x-app-key",
    ]);
    let carol_token = token("carol", &[]);
    let mut carol = Client::connect(&forwarding, &carol_token, Encoding::Json).await;
    carol.wait_op("ready").await;
    let (body, headers) = seen.calls_to("connect").remove(0);
    assert_eq!(body["token"], carol_token.as_str());
    assert_eq!(headers["x-app-key"], "k3y");
    assert!(!headers.contains_key("x-coregate-secret"));
}

#[tokio::test]
async fn ready_follows_the_backend_only_when_configured_to() {
    // Nothing listens on the backend's port yet.
    let port = common::free_port();
    let rpc_url = format!("http://127.0.0.1:{port}/rpc");
    let watching = Gateway::start(&["--proxy-rpc-url", &rpc_url, "--proxy-in-ready", "true"]);
    let indifferent = Gateway::start(&["--proxy-rpc-url", &rpc_url]);
    watching
        .wait_ready_status(503, Duration::from_secs(5))
        .await;
    let (_, body) = watching.get("/ready").await;
    assert!(body.contains("backend unreachable"), "{body}");
    assert_eq!(indifferent.get("/ready").await.0, 200);

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let _backend = backend_on(listener);
    watching
        .wait_ready_status(200, Duration::from_secs(5))
        .await;
}

#[tokio::test]
async fn a_connect_backend_that_is_down_closes_4000_with_reconnect() {
    let gw = Gateway::start(&["--proxy-connect-url", "http://127.0.0.1:9/connect"]);
    let mut bob = Client::connect(&gw, &token("bob", &[]), Encoding::Json).await;
    bob.expect_op("hello").await;
    let reconnect = bob.expect_op("reconnect").await;
    assert!(reconnect.d["retry_after_ms"].as_u64().is_some());
    assert_eq!(bob.expect_close().await, 4000);
}

#[tokio::test]
async fn the_proxy_authorizer_asks_the_backend_once_per_verdict_and_refuses_not_ready_when_down() {
    let (base, seen) = backend_at().await;
    let subscribe_url = format!("{base}/subscribe");
    let gw = Gateway::start(&[
        "--authorizer",
        "proxy",
        "--proxy-subscribe-url",
        &subscribe_url,
        "--authorizer-timeout",
        "2s",
    ]);
    // The token's claim would allow everything: the backend alone decides.
    let mut alice = Client::ready(&gw, &token("alice", &["channel:*"]), Encoding::Json).await;
    let subscribed = alice.subscribe(&["channel:open", "channel:secret"]).await;
    assert_eq!(
        subscribed.d["topics"],
        json!(["channel:open"]),
        "{subscribed:?}"
    );
    let error = alice.wait_op("error").await;
    assert_eq!(error.d["code"], "forbidden");
    assert_eq!(error.d["topics"], json!(["channel:secret"]));
    let asked = seen.calls_to("subscribe");
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0].0["user_id"], "alice");
    // Cached per shard: the same verdicts again cost the backend nothing.
    alice
        .send(ClientMessage::Unsubscribe {
            topics: vec!["channel:open".into()],
        })
        .await;
    alice.wait_op("unsubscribed").await;
    let again = alice.subscribe(&["channel:open"]).await;
    assert_eq!(again.d["topics"], json!(["channel:open"]));
    assert_eq!(seen.calls_to("subscribe").len(), 2);
    // A backend that is down: refused not_ready, never granted.
    let down = Gateway::start(&[
        "--authorizer",
        "proxy",
        "--proxy-subscribe-url",
        "http://127.0.0.1:9/subscribe",
    ]);
    let mut bob = Client::ready(&down, &token("bob", &["channel:*"]), Encoding::Json).await;
    bob.send(ClientMessage::Subscribe {
        topics: vec!["channel:open".into()],
        since: None,
    })
    .await;
    let error = bob.wait_op("error").await;
    assert_eq!(error.d["code"], "not_ready");
}

#[tokio::test]
async fn a_subscribe_with_many_gated_topics_asks_the_backend_a_few_at_a_time_and_a_slow_one_is_not_ready(
) {
    let (base, seen) = backend_at().await;
    let subscribe_url = format!("{base}/subscribe");
    let gw = Gateway::start(&[
        "--authorizer",
        "proxy",
        "--proxy-subscribe-url",
        &subscribe_url,
        "--authorizer-timeout",
        "5s",
    ]);
    let mut alice = Client::ready(&gw, &token("alice", &["channel:*"]), Encoding::Json).await;
    let topics: Vec<String> = (0..24).map(|i| format!("channel:slow-{i}")).collect();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let subscribed = alice.subscribe(&topics).await;
    assert_eq!(subscribed.d["topics"].as_array().unwrap().len(), 24);
    assert_eq!(seen.calls_to("subscribe").len(), 24);
    // 8 at a time (three rounds of 200 ms), not 24 POSTs at once.
    let most = MOST_SLOW_CHECKS.load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=8).contains(&most), "{most} checks at once");
    // A backend slower than --authorizer-timeout: refused not_ready, never granted,
    // and the connection is served meanwhile.
    let impatient = Gateway::start(&[
        "--authorizer",
        "proxy",
        "--proxy-subscribe-url",
        &subscribe_url,
        "--authorizer-timeout",
        "300ms",
    ]);
    let mut bob = Client::ready(&impatient, &token("bob", &["channel:*"]), Encoding::Json).await;
    let asked_at = Instant::now();
    bob.send(ClientMessage::Subscribe {
        topics: vec!["channel:never".into()],
        since: None,
    })
    .await;
    let r#ref = bob.send(ClientMessage::Ping).await;
    let pong = bob.wait_op("pong").await;
    assert_eq!(pong.r#ref, Some(r#ref));
    assert!(
        asked_at.elapsed() < Duration::from_millis(250),
        "the ping waited for the check"
    );
    let error = bob.wait_op("error").await;
    assert_eq!(error.d["code"], "not_ready");
    assert_eq!(error.d["topics"], json!(["channel:never"]));
}
