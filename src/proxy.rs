//! Calls to the application backend over HTTP/1.1 with JSON bodies (docs/protocol.md §8),
//! the way Centrifugo's proxy makes them: `rpc` (a client's call), connect (who a new
//! connection is, and the `data` of its `ready`) and subscribe (`--authorizer proxy`).
//!
//! The shards never call the backend: each call reaches this module over a bounded
//! flume queue (an [`RpcCall`], a [`ConnectCall`], a [`MembershipCheck`]) and runs on the
//! `proxy` thread, a tokio runtime of its own with one keep-alive connection pool
//! (hyper). Each call is bounded by `--proxy-timeout`, its answer's size by the
//! connection's control budget, and the calls in flight by `--proxy-max-in-flight` (past
//! it the queues fill and the shards answer at once: `unavailable`, `not_ready`, 4000),
//! so a slow or dead backend costs bounded memory and never a shard's time. Answers go
//! back through the asking shard's inbox (rpc) or the call's reply channel.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coregate_protocol::Topic;
use coregate_shards::stats::LatencyHistogram;
use coregate_shards::{
    ConnectAnswer, ConnectCall, ConnectGrant, ConnectRefusal, MembershipCheck, MembershipError,
    RpcAnswer, RpcCall, RpcFailure, ShardMessage, ShardSender,
};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::auth::shared_patterns;

/// How many calls of one kind wait for the backend client at most.
pub const QUEUE: usize = 4096;
/// Idle keep-alive connections kept to the backend.
const POOL_IDLE: usize = 64;
/// A `subscribe` check's `{user_id, topic}` POSTs made at once: a client subscribing to
/// a handful of gated topics is answered in one round trip, one asking for hundreds
/// takes a few more, and neither holds more than this of `--proxy-max-in-flight`.
const TOPIC_CALLS_AT_ONCE: usize = 8;
/// The header every call carries the request id in.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// How often `--proxy-in-ready` probes the backend.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// What the backend client needs to know.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub rpc_url: Option<hyper::Uri>,
    /// `--proxy-rpc-methods`; `None`: any method.
    pub rpc_methods: Option<Vec<String>>,
    pub connect_url: Option<hyper::Uri>,
    pub subscribe_url: Option<hyper::Uri>,
    pub timeout: Duration,
    pub secret: Option<String>,
    /// `--proxy-secret-header`.
    pub secret_header: hyper::header::HeaderName,
    /// `--proxy-in-ready`: probe the backend every [`PROBE_INTERVAL`].
    pub probe: bool,
    /// `--proxy-max-in-flight`: calls made at once, all kinds together.
    pub max_in_flight: usize,
    /// The largest answer body accepted: the connection's control budget, since an rpc
    /// answer is queued as a reply.
    pub max_answer: usize,
}

/// Parses a `--proxy-*-url`: an `http://` URL (TLS to the backend is not built).
pub fn parse_url(url: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err("must be an http:// URL with a host".to_owned());
    }
    Ok(uri)
}

/// A comma-separated setting (`--proxy-rpc-methods`, `--proxy-connect-headers`), blanks
/// ignored.
pub fn parse_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect()
}

/// One kind of call's outcomes and latency; written by the proxy thread alone.
#[derive(Debug, Default)]
pub struct CallStats {
    pub ok: AtomicU64,
    /// The backend said no: rpc `{error}`, connect `{error}`, subscribe `allow: false`.
    pub refused: AtomicU64,
    /// Past `--proxy-timeout`.
    pub timeout: AtomicU64,
    /// Not reachable, or an HTTP error status.
    pub unreachable: AtomicU64,
    /// An answer that is not the documented JSON, or too large.
    pub bad_answer: AtomicU64,
    /// An rpc method outside `--proxy-rpc-methods`: refused without a call.
    pub forbidden: AtomicU64,
    /// From sending the call to its answer, for the calls that got one in time.
    pub latency: LatencyHistogram,
}

impl CallStats {
    /// The outcome counters, labelled as `/metrics` exports them.
    pub fn outcomes(&self) -> [(&'static str, u64); 6] {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("ok", load(&self.ok)),
            ("refused", load(&self.refused)),
            ("timeout", load(&self.timeout)),
            ("unreachable", load(&self.unreachable)),
            ("bad_answer", load(&self.bad_answer)),
            ("forbidden", load(&self.forbidden)),
        ]
    }

    fn count(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::TimedOut => &self.timeout,
            Outcome::Unreachable => &self.unreachable,
            Outcome::BadAnswer => &self.bad_answer,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every kind of backend call's figures.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub rpc: CallStats,
    pub connect: CallStats,
    pub subscribe: CallStats,
    /// The last call or probe got no HTTP answer (unreachable or timed out); read by
    /// `/ready` with `--proxy-in-ready`.
    unreachable: AtomicBool,
}

impl ProxyStats {
    /// Whether the backend's last call or probe got no HTTP answer.
    pub fn unreachable(&self) -> bool {
        self.unreachable.load(Ordering::Relaxed)
    }

    fn set_unreachable(&self, unreachable: bool) {
        self.unreachable.store(unreachable, Ordering::Relaxed);
    }

    /// The kinds, labelled as `/metrics` exports them.
    pub fn kinds(&self) -> [(&'static str, &CallStats); 3] {
        [
            ("rpc", &self.rpc),
            ("connect", &self.connect),
            ("subscribe", &self.subscribe),
        ]
    }
}

/// The receiving sides of the shards' queues, one per configured call.
#[derive(Debug, Default)]
pub struct ProxyQueues {
    pub rpc: Option<flume::Receiver<RpcCall>>,
    pub connect: Option<flume::Receiver<ConnectCall>>,
    pub subscribe: Option<flume::Receiver<MembershipCheck>>,
}

/// Starts the `proxy` thread; it ends when every shard's senders are gone.
pub fn spawn(
    queues: ProxyQueues,
    shards: Vec<ShardSender>,
    settings: ProxySettings,
    stats: Arc<ProxyStats>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("proxy".into())
        .spawn(move || runtime.block_on(run(queues, shards, settings, stats)))
}

/// The state every call shares.
struct Backend {
    client: Client<HttpConnector, Full<Bytes>>,
    settings: ProxySettings,
    stats: Arc<ProxyStats>,
    shards: Vec<ShardSender>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

async fn run(
    queues: ProxyQueues,
    shards: Vec<ShardSender>,
    settings: ProxySettings,
    stats: Arc<ProxyStats>,
) {
    let max_in_flight = settings.max_in_flight;
    let backend = Arc::new(Backend {
        client: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(POOL_IDLE.min(settings.max_in_flight))
            .build_http(),
        settings,
        stats,
        shards,
        in_flight: Arc::new(tokio::sync::Semaphore::new(max_in_flight)),
    });
    if backend.settings.probe {
        tokio::spawn(backend.clone().probe());
    }
    let rpc = serve(queues.rpc, backend.clone(), |_| 1, Backend::rpc);
    let connect = serve(queues.connect, backend.clone(), |_| 1, Backend::connect);
    let subscribe = serve(
        queues.subscribe,
        backend.clone(),
        |check: &MembershipCheck| backend.topic_calls_at_once(check),
        Backend::subscribe,
    );
    tokio::join!(rpc, connect, subscribe);
}

/// Takes one queue's calls until its senders are gone, each in a task of its own once
/// as many places among `--proxy-max-in-flight` as it makes POSTs at once (`places`)
/// are free. Taken in one step, never one by one, so that calls never hold some places
/// while waiting for more.
async fn serve<C, F>(
    queue: Option<flume::Receiver<C>>,
    backend: Arc<Backend>,
    places: impl Fn(&C) -> u32,
    call: fn(Arc<Backend>, C) -> F,
) where
    C: Send + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(queue) = queue else {
        return;
    };
    while let Ok(request) = queue.recv_async().await {
        let wanted = places(&request);
        let Ok(permit) = backend.in_flight.clone().acquire_many_owned(wanted).await else {
            return;
        };
        let future = call(backend.clone(), request);
        tokio::spawn(async move {
            future.await;
            drop(permit);
        });
    }
}

/// Why a call got no usable answer.
enum Outcome {
    TimedOut,
    Unreachable,
    BadAnswer,
}

impl Outcome {
    fn message(&self, timeout: Duration) -> String {
        match self {
            Outcome::TimedOut => format!("the backend did not answer within {timeout:?}"),
            Outcome::Unreachable => "the backend cannot be reached".into(),
            Outcome::BadAnswer => "the backend's answer was not usable".into(),
        }
    }
}

impl Backend {
    /// POSTs `body` to `url` and reads the JSON answer of an HTTP 2xx, within the
    /// timeout and the size bound.
    async fn post(
        &self,
        url: &hyper::Uri,
        body: &Value,
        stats: &CallStats,
    ) -> Result<Value, Outcome> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut request = hyper::Request::post(url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(REQUEST_ID_HEADER, request_id.as_str());
        if let Some(secret) = &self.settings.secret {
            request = request.header(&self.settings.secret_header, secret.as_str());
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|_| Outcome::BadAnswer)?;
        let started = Instant::now();
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                tracing::debug!(request_id, error = %e, "backend unreachable");
                Outcome::Unreachable
            })?;
            if !response.status().is_success() {
                tracing::debug!(request_id, status = %response.status(), "backend error status");
                return Err(Outcome::Unreachable);
            }
            let body = Limited::new(response.into_body(), self.settings.max_answer)
                .collect()
                .await
                .map_err(|_| Outcome::BadAnswer)?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|_| Outcome::BadAnswer)
        };
        let answer = tokio::time::timeout(self.settings.timeout, exchange)
            .await
            .unwrap_or(Err(Outcome::TimedOut));
        if !matches!(answer, Err(Outcome::TimedOut)) {
            stats.latency.observe(started.elapsed(), 1);
        }
        self.stats.set_unreachable(matches!(
            answer,
            Err(Outcome::TimedOut | Outcome::Unreachable)
        ));
        if let Err(outcome) = &answer {
            stats.count(outcome);
        }
        answer
    }

    /// `--proxy-in-ready`: a `GET` of each configured URL every [`PROBE_INTERVAL`], so
    /// that `/ready` follows the backend without waiting for a client's call. Any HTTP
    /// answer, even 404 or 405, says the backend is there.
    async fn probe(self: Arc<Self>) {
        let urls: Vec<hyper::Uri> = [
            &self.settings.rpc_url,
            &self.settings.connect_url,
            &self.settings.subscribe_url,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        let mut interval = tokio::time::interval(PROBE_INTERVAL);
        loop {
            interval.tick().await;
            let mut reachable = true;
            for url in &urls {
                let Ok(request) = hyper::Request::get(url.clone()).body(Full::default()) else {
                    continue;
                };
                let answer =
                    tokio::time::timeout(self.settings.timeout, self.client.request(request));
                reachable &= matches!(answer.await, Ok(Ok(_)));
            }
            self.stats.set_unreachable(!reachable);
        }
    }

    /// A client's `rpc`: `{user_id, session_id, method, d, meta}` → `{d}` or `{error}`.
    async fn rpc(self: Arc<Self>, call: RpcCall) {
        let stats = &self.stats.rpc;
        let allowed = self
            .settings
            .rpc_methods
            .as_ref()
            .is_none_or(|methods| methods.contains(&call.method));
        let answer = match &self.settings.rpc_url {
            _ if !allowed => {
                stats.forbidden.fetch_add(1, Ordering::Relaxed);
                Err(RpcFailure {
                    code: coregate_protocol::ErrorCode::Forbidden.as_str().to_owned(),
                    message: format!("no rpc method `{}` here", call.method),
                })
            }
            None => Err(RpcFailure::unavailable(
                "rpc is not configured on this gateway",
            )),
            Some(url) => {
                let body = json!({
                    "user_id": call.user_id,
                    "session_id": call.session_id,
                    "method": call.method,
                    "d": call.d,
                    "meta": call.meta,
                });
                match self.post(url, &body, stats).await {
                    Ok(answer) => read_rpc_answer(answer, stats),
                    Err(outcome) => Err(RpcFailure::unavailable(
                        outcome.message(self.settings.timeout),
                    )),
                }
            }
        };
        // A stopped shard has no one to tell (answers are never refused for space).
        if let Some(shard) = self.shards.get(call.shard_id) {
            let _ = shard.answer(ShardMessage::RpcResult {
                conn: call.conn,
                r#ref: call.r#ref,
                answer,
            });
        }
    }

    /// A new connection: `{user_id?, headers, query}` → `{user_id, name?, topics?,
    /// presence?, data?}` or `{error}`.
    async fn connect(self: Arc<Self>, call: ConnectCall) {
        let stats = &self.stats.connect;
        let answer = match &self.settings.connect_url {
            None => Err(ConnectRefusal::Unavailable(
                "connect is not configured".into(),
            )),
            Some(url) => {
                let mut body = json!({
                    "user_id": call.user_id,
                    "headers": pairs_to_map(&call.headers),
                    "query": pairs_to_map(&call.query),
                });
                if let Some(token) = call.token {
                    body["token"] = Value::String(token);
                }
                match self.post(url, &body, stats).await {
                    Ok(answer) => {
                        let grant = read_connect_answer(answer);
                        match &grant {
                            Ok(_) => stats.ok.fetch_add(1, Ordering::Relaxed),
                            Err(ConnectRefusal::Denied { .. }) => {
                                stats.refused.fetch_add(1, Ordering::Relaxed)
                            }
                            Err(ConnectRefusal::Unavailable(_)) => {
                                stats.bad_answer.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                        grant
                    }
                    Err(outcome) => Err(ConnectRefusal::Unavailable(
                        outcome.message(self.settings.timeout),
                    )),
                }
            }
        };
        // The handshake may have given up waiting.
        let _ = call.reply.send(answer);
    }

    /// How many of a check's `{user_id, topic}` POSTs go out at once: its topics, at
    /// most [`TOPIC_CALLS_AT_ONCE`] and never more than `--proxy-max-in-flight`, so that
    /// one `subscribe` with many gated topics makes the backend no busier than that.
    fn topic_calls_at_once(&self, check: &MembershipCheck) -> u32 {
        let cap = TOPIC_CALLS_AT_ONCE.min(self.settings.max_in_flight);
        check.topics.len().clamp(1, cap) as u32
    }

    /// `--authorizer proxy`: one `{user_id, topic}` → `{allow, reason?}` per topic,
    /// [`Self::topic_calls_at_once`] at a time; the topics are refused `not_ready` if any
    /// could not be decided.
    async fn subscribe(self: Arc<Self>, check: MembershipCheck) {
        let stats = &self.stats.subscribe;
        let Some(url) = &self.settings.subscribe_url else {
            let _ = check.reply.send(Err(MembershipError::Unavailable));
            return;
        };
        let backend = &*self;
        let decisions: Vec<_> = check
            .topics
            .iter()
            .map(|topic| {
                let body = json!({"user_id": check.user_id, "topic": topic.as_str()});
                async move {
                    let answer = backend.post(url, &body, stats).await.ok()?;
                    let allow = answer.get("allow").and_then(Value::as_bool);
                    match allow {
                        Some(true) => stats.ok.fetch_add(1, Ordering::Relaxed),
                        Some(false) => {
                            let reason = answer.get("reason").and_then(Value::as_str);
                            tracing::debug!(
                                topic = topic.as_str(),
                                reason,
                                "subscribe denied by the backend"
                            );
                            stats.refused.fetch_add(1, Ordering::Relaxed)
                        }
                        None => stats.bad_answer.fetch_add(1, Ordering::Relaxed),
                    };
                    allow
                }
            })
            .collect();
        let at_once = self.topic_calls_at_once(&check) as usize;
        let verdicts: Option<Vec<bool>> = futures_util::stream::iter(decisions)
            .buffered(at_once)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect();
        let answer = verdicts.ok_or_else(|| {
            MembershipError::Store("the backend could not decide every topic".into())
        });
        let _ = check.reply.send(answer);
    }
}

/// Name/value pairs as a JSON object; a repeated name's values are joined with `, `.
fn pairs_to_map(pairs: &[(String, String)]) -> Value {
    let mut map = serde_json::Map::new();
    for (name, value) in pairs {
        match map.get_mut(name) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(value);
            }
            _ => {
                map.insert(name.clone(), Value::String(value.clone()));
            }
        }
    }
    Value::Object(map)
}

/// The backend's `{error: {code, message}}`, if that is what it answered; `Err` if its
/// `error` is malformed.
fn backend_error(answer: &Value) -> Result<Option<(String, String)>, ()> {
    let Some(error) = answer.get("error") else {
        return Ok(None);
    };
    let code = error.get("code").and_then(Value::as_str).ok_or(())?;
    let message = error.get("message").and_then(Value::as_str).unwrap_or("");
    Ok(Some((code.to_owned(), message.to_owned())))
}

/// An rpc answer: `{d}` (a missing `d` is null) or the backend's error, counted.
fn read_rpc_answer(mut answer: Value, stats: &CallStats) -> RpcAnswer {
    let unusable = || RpcFailure::unavailable(Outcome::BadAnswer.message(Duration::ZERO));
    if !answer.is_object() {
        stats.bad_answer.fetch_add(1, Ordering::Relaxed);
        return Err(unusable());
    }
    match backend_error(&answer) {
        Err(()) => {
            stats.bad_answer.fetch_add(1, Ordering::Relaxed);
            Err(unusable())
        }
        Ok(Some((code, message))) => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            Err(RpcFailure { code, message })
        }
        Ok(None) => {
            stats.ok.fetch_add(1, Ordering::Relaxed);
            Ok(answer.get_mut("d").map(Value::take).unwrap_or(Value::Null))
        }
    }
}

/// A connect answer: who the connection is (checked like a token's claims), or the
/// backend's refusal; anything else is unusable.
fn read_connect_answer(answer: Value) -> ConnectAnswer {
    let unusable =
        |why: &str| ConnectRefusal::Unavailable(format!("unusable connect answer: {why}"));
    match backend_error(&answer) {
        Err(()) => return Err(unusable("malformed `error`")),
        Ok(Some((code, message))) => return Err(ConnectRefusal::Denied { code, message }),
        Ok(None) => {}
    }
    let user_id = answer
        .get("user_id")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty() && u.len() <= 128 && Topic::user(u).is_ok())
        .ok_or_else(|| unusable("`user_id` must be 1-128 printable ASCII bytes"))?;
    let strings = |key: &str| -> Result<Option<Vec<&str>>, ConnectRefusal> {
        match answer.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().ok_or_else(|| unusable(key)))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(unusable(key)),
        }
    };
    let topics = strings("topics")?
        .map(|list| shared_patterns(&list.into_iter().map(str::to_owned).collect::<Vec<_>>()))
        .transpose()
        .map_err(|_| unusable("`topics`"))?;
    let presence = strings("presence")?
        .map(|list| {
            list.into_iter()
                .map(Topic::parse)
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()
        .map_err(|_| unusable("`presence`"))?;
    Ok(ConnectGrant {
        user_id: user_id.to_owned(),
        name: answer
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned),
        topics,
        presence,
        data: answer.get("data").filter(|d| !d.is_null()).cloned(),
        meta: answer.get("meta").filter(|m| !m.is_null()).cloned(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_rpc_answer_is_its_d_or_the_backends_error_or_unusable() {
        let stats = CallStats::default();
        let read = |body: Value| read_rpc_answer(body, &stats);
        assert_eq!(read(json!({"d": {"id": "m1"}})), Ok(json!({"id": "m1"})));
        assert_eq!(read(json!({})), Ok(Value::Null));
        assert_eq!(
            read(json!({"error": {"code": "too_long", "message": "max 2000"}})),
            Err(RpcFailure {
                code: "too_long".into(),
                message: "max 2000".into()
            })
        );
        assert_eq!(
            read(json!({"error": {"message": "no code"}}))
                .unwrap_err()
                .code,
            "unavailable"
        );
        assert_eq!(read(json!([1])).unwrap_err().code, "unavailable");
        assert_eq!(stats.ok.load(Ordering::Relaxed), 2);
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
        assert_eq!(stats.bad_answer.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_connect_answer_is_checked_like_a_tokens_claims() {
        let grant = read_connect_answer(json!({
            "user_id": "alice", "name": "Alice", "topics": ["channel:*"],
            "presence": ["server:1"], "data": {"servers": [1]}
        }))
        .unwrap();
        assert_eq!(grant.user_id, "alice");
        assert_eq!(grant.name.as_deref(), Some("Alice"));
        assert!(grant
            .topics
            .as_ref()
            .unwrap()
            .allows(&Topic::parse("channel:9").unwrap()));
        assert_eq!(grant.presence.unwrap(), [Topic::parse("server:1").unwrap()]);
        assert_eq!(grant.data, Some(json!({"servers": [1]})));
        let again = read_connect_answer(json!({"user_id": "carol", "topics": ["channel:*"]}));
        assert!(
            again
                .unwrap()
                .topics
                .unwrap()
                .is_same_copy(grant.topics.as_ref().unwrap()),
            "the same list is one shared set, as for tokens"
        );
        let bare = read_connect_answer(json!({"user_id": "bob"})).unwrap();
        assert!(bare.topics.is_none() && bare.presence.is_none() && bare.data.is_none());
        assert_eq!(
            read_connect_answer(json!({"error": {"code": "no_session", "message": "log in"}}))
                .unwrap_err(),
            ConnectRefusal::Denied {
                code: "no_session".into(),
                message: "log in".into()
            }
        );
        for unusable in [
            json!({}),
            json!({"user_id": ""}),
            json!({"user_id": "has space"}),
            json!({"user_id": "x".repeat(129)}),
            json!({"user_id": "a", "topics": "channel:*"}),
            json!({"user_id": "a", "topics": ["bad topic"]}),
            json!({"user_id": "a", "presence": [1]}),
        ] {
            assert!(
                matches!(
                    read_connect_answer(unusable.clone()),
                    Err(ConnectRefusal::Unavailable(_))
                ),
                "{unusable}"
            );
        }
    }

    #[test]
    fn urls_are_plain_http_lists_comma_separated_and_repeated_headers_joined() {
        assert!(parse_url("http://127.0.0.1:3000/rpc").is_ok());
        assert!(parse_url("https://backend/rpc").is_err());
        assert!(parse_url("backend/rpc").is_err());
        assert_eq!(parse_list(" send, edit ,,"), ["send", "edit"]);
        let pairs = [
            ("cookie".to_owned(), "a=1".to_owned()),
            ("cookie".to_owned(), "b=2".to_owned()),
        ];
        assert_eq!(pairs_to_map(&pairs), json!({"cookie": "a=1, b=2"}));
    }
}
