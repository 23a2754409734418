//! Calls to the application backend over HTTP/1.1 with JSON bodies (docs/protocol.md §8),
//! the way Centrifugo's proxy makes them. Built: `rpc`. Not built yet: the connect and
//! subscribe calls.
//!
//! The shards never call the backend: a client's `rpc` reaches this module as an
//! [`RpcCall`] over a bounded flume queue, and runs on the `proxy` thread, a tokio
//! runtime of its own with one keep-alive connection pool (hyper). Each call is bounded by
//! `--proxy-timeout`, its answer by the connection's control budget, and the calls in
//! flight by [`MAX_CALLS_IN_FLIGHT`] (past it the queue fills and the shards answer
//! `unavailable` at once), so a slow or dead backend costs bounded memory and never a
//! shard's time. The answer goes back through the asking shard's inbox.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coregate_shards::stats::LatencyHistogram;
use coregate_shards::{RpcAnswer, RpcCall, RpcFailure, ShardMessage, ShardSender};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How many shard calls wait for the backend queue at most.
pub const QUEUE: usize = 4096;
/// Calls made to the backend at once, at most.
pub const MAX_CALLS_IN_FLIGHT: usize = 1024;
/// Idle keep-alive connections kept to the backend.
const POOL_IDLE: usize = 64;
/// The header every call carries the request id in.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The header every call carries `--proxy-secret` in.
pub const SECRET_HEADER: &str = "x-coregate-secret";

/// What the backend client needs to know.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub rpc_url: hyper::Uri,
    /// `--proxy-rpc-methods`; `None`: any method.
    pub rpc_methods: Option<Vec<String>>,
    pub timeout: Duration,
    pub secret: Option<String>,
    /// The largest answer body accepted: the connection's control budget, since the
    /// answer is queued as a reply.
    pub max_answer: usize,
}

/// Parses `--proxy-rpc-url`: an `http://` URL (TLS to the backend is not built).
pub fn parse_url(url: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err("must be an http:// URL with a host".to_owned());
    }
    Ok(uri)
}

/// `--proxy-rpc-methods`: comma-separated names, blanks ignored.
pub fn parse_methods(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Backend calls by outcome, and their latency; written by the proxy thread alone.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub rpc_ok: AtomicU64,
    /// The backend answered `{error: …}`.
    pub rpc_backend_error: AtomicU64,
    /// Past `--proxy-timeout`.
    pub rpc_timeout: AtomicU64,
    /// Not reachable, or an HTTP error status.
    pub rpc_unreachable: AtomicU64,
    /// An answer that is not the documented JSON, or too large.
    pub rpc_bad_answer: AtomicU64,
    /// A method not in `--proxy-rpc-methods`: refused without a call.
    pub rpc_forbidden: AtomicU64,
    /// Time from sending the call to its answer, for the calls that were made.
    pub rpc_latency: LatencyHistogram,
}

impl ProxyStats {
    /// The outcome counters, labelled as `/metrics` exports them.
    pub fn outcomes(&self) -> [(&'static str, u64); 6] {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("ok", load(&self.rpc_ok)),
            ("backend_error", load(&self.rpc_backend_error)),
            ("timeout", load(&self.rpc_timeout)),
            ("unreachable", load(&self.rpc_unreachable)),
            ("bad_answer", load(&self.rpc_bad_answer)),
            ("forbidden", load(&self.rpc_forbidden)),
        ]
    }
}

/// Starts the `proxy` thread; it ends when every shard's sender is gone.
pub fn spawn(
    calls: flume::Receiver<RpcCall>,
    shards: Vec<ShardSender>,
    settings: ProxySettings,
    stats: Arc<ProxyStats>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("proxy".into())
        .spawn(move || runtime.block_on(run(calls, shards, settings, stats)))
}

async fn run(
    calls: flume::Receiver<RpcCall>,
    shards: Vec<ShardSender>,
    settings: ProxySettings,
    stats: Arc<ProxyStats>,
) {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(POOL_IDLE)
        .build_http();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_CALLS_IN_FLIGHT));
    let settings = Arc::new(settings);
    let shards = Arc::new(shards);
    while let Ok(call) = calls.recv_async().await {
        let allowed = settings
            .rpc_methods
            .as_ref()
            .is_none_or(|methods| methods.contains(&call.method));
        if !allowed {
            stats.rpc_forbidden.fetch_add(1, Ordering::Relaxed);
            let refusal = RpcFailure {
                code: coregate_protocol::ErrorCode::Forbidden.as_str().to_owned(),
                message: format!("no rpc method `{}` here", call.method),
            };
            answer(&shards, &call, Err(refusal));
            continue;
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let (client, settings, shards, stats) = (
            client.clone(),
            settings.clone(),
            shards.clone(),
            stats.clone(),
        );
        tokio::spawn(async move {
            let result = call_rpc(&client, &settings, &call, &stats).await;
            answer(&shards, &call, result);
            drop(permit);
        });
    }
}

/// Sends the answer to the asking connection's shard (a stopped shard has no one to
/// tell; a full inbox drops it, and the connection's call stays counted in flight).
fn answer(shards: &[ShardSender], call: &RpcCall, answer: RpcAnswer) {
    if let Some(shard) = shards.get(call.shard_id) {
        let _ = shard.try_send(ShardMessage::RpcResult {
            conn: call.conn,
            r#ref: call.r#ref,
            answer,
        });
    }
}

/// One `rpc` call: POST, then the answer's `{d}` or `{error}`, each failure counted.
async fn call_rpc(
    client: &Client<HttpConnector, Full<Bytes>>,
    settings: &ProxySettings,
    call: &RpcCall,
    stats: &ProxyStats,
) -> RpcAnswer {
    let body = serde_json::json!({
        "user_id": call.user_id,
        "session_id": call.session_id,
        "method": call.method,
        "d": call.d,
        // The connection's data from the connect call (§8), which is not built yet.
        "meta": serde_json::Value::Null,
    });
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut request = hyper::Request::post(settings.rpc_url.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(REQUEST_ID_HEADER, request_id.as_str());
    if let Some(secret) = &settings.secret {
        request = request.header(SECRET_HEADER, secret.as_str());
    }
    let Ok(request) = request.body(Full::new(Bytes::from(body.to_string()))) else {
        stats.rpc_bad_answer.fetch_add(1, Ordering::Relaxed);
        return Err(RpcFailure::unavailable("the call could not be made"));
    };
    let started = Instant::now();
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            tracing::debug!(request_id, error = %e, "rpc: backend unreachable");
            Outcome::Unreachable
        })?;
        if !response.status().is_success() {
            tracing::debug!(request_id, status = %response.status(), "rpc: backend error status");
            return Err(Outcome::Unreachable);
        }
        let body = Limited::new(response.into_body(), settings.max_answer)
            .collect()
            .await
            .map_err(|_| Outcome::BadAnswer)?
            .to_bytes();
        Ok(body)
    };
    let outcome = match tokio::time::timeout(settings.timeout, exchange).await {
        Err(_) => Err(Outcome::TimedOut),
        Ok(result) => result,
    };
    if !matches!(outcome, Err(Outcome::TimedOut)) {
        stats.rpc_latency.observe(started.elapsed(), 1);
    }
    let failure = match outcome.map(|body| read_answer(&body)) {
        Ok(Ok(d)) => {
            stats.rpc_ok.fetch_add(1, Ordering::Relaxed);
            return Ok(d);
        }
        Ok(Err(Some(backend))) => {
            stats.rpc_backend_error.fetch_add(1, Ordering::Relaxed);
            return Err(backend);
        }
        Ok(Err(None)) => Outcome::BadAnswer,
        Err(outcome) => outcome,
    };
    let (counter, message) = match failure {
        Outcome::TimedOut => (
            &stats.rpc_timeout,
            format!("the backend did not answer within {:?}", settings.timeout),
        ),
        Outcome::Unreachable => (
            &stats.rpc_unreachable,
            "the backend cannot be reached".into(),
        ),
        Outcome::BadAnswer => (
            &stats.rpc_bad_answer,
            "the backend's answer was not usable".into(),
        ),
    };
    counter.fetch_add(1, Ordering::Relaxed);
    Err(RpcFailure::unavailable(message))
}

/// Why a call got no usable answer.
enum Outcome {
    TimedOut,
    Unreachable,
    BadAnswer,
}

/// The backend's answer body: `{d}` (a missing `d` is null), or `{error: {code,
/// message}}` (`Err(Some)`); anything else is not usable (`Err(None)`).
fn read_answer(body: &[u8]) -> Result<serde_json::Value, Option<RpcFailure>> {
    let serde_json::Value::Object(mut answer) = serde_json::from_slice(body).map_err(|_| None)?
    else {
        return Err(None);
    };
    if let Some(error) = answer.get("error") {
        let code = error.get("code").and_then(|c| c.as_str()).ok_or(None)?;
        let message = error.get("message").and_then(|m| m.as_str()).unwrap_or("");
        return Err(Some(RpcFailure {
            code: code.to_owned(),
            message: message.to_owned(),
        }));
    }
    Ok(answer.remove("d").unwrap_or(serde_json::Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_its_d_or_the_backends_error_or_unusable() {
        assert_eq!(
            read_answer(br#"{"d":{"id":"m1"}}"#),
            Ok(serde_json::json!({"id": "m1"}))
        );
        assert_eq!(read_answer(b"{}"), Ok(serde_json::Value::Null));
        assert_eq!(
            read_answer(br#"{"error":{"code":"too_long","message":"max 2000"}}"#),
            Err(Some(RpcFailure {
                code: "too_long".into(),
                message: "max 2000".into()
            }))
        );
        assert_eq!(
            read_answer(br#"{"error":{"message":"no code"}}"#),
            Err(None)
        );
        assert_eq!(read_answer(b"[1]"), Err(None));
        assert_eq!(read_answer(b"not json"), Err(None));
    }

    #[test]
    fn the_url_is_plain_http_and_methods_a_list() {
        assert!(parse_url("http://127.0.0.1:3000/rpc").is_ok());
        assert!(parse_url("https://backend/rpc").is_err());
        assert!(parse_url("backend/rpc").is_err());
        assert_eq!(parse_methods(" send, edit ,,"), ["send", "edit"]);
    }
}
