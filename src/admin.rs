//! The admin HTTP API: `/health`, `/ready`, `/publish`, `/metrics`. It runs on its
//! own thread and never touches shard state: it reads the shards' counters and
//! hands publications to the ingestor.
//!
//! It belongs on a private interface (loopback by default). Two guards hold even
//! when a browser on the same machine is the caller (CSRF): `POST /publish` takes
//! only `Content-Type: application/json`, which a web page cannot send to another
//! origin without a CORS preflight that this API never grants (a "simple" no-cors
//! POST is `text/plain` at most); and with `--admin-token`, every route that changes
//! something requires `Authorization: Bearer <token>`, which a page cannot attach
//! cross-origin either.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use coregate_protocol::Publication;
use coregate_shards::{IngestorCommand, ShardStats};

use crate::config::ConfigError;
use crate::ingest::IngestorStats;

/// What the admin side can see of the node.
#[derive(Clone)]
pub struct AdminState {
    pub ingestor: flume::Sender<IngestorCommand>,
    pub shard_stats: Vec<Arc<ShardStats>>,
    pub ingestor_stats: Arc<IngestorStats>,
    pub proxy_stats: Arc<crate::proxy::ProxyStats>,
    /// Set on SIGTERM: the node is going away.
    pub draining: Arc<AtomicBool>,
    /// Whether the node is fed through Redis (then it is ready only while connected).
    pub redis_configured: bool,
    /// `--proxy-in-ready`: the node is ready only while its backend can be reached.
    pub backend_in_ready: bool,
    pub max_message_size: usize,
    /// `--admin-token`: what mutating routes require as a bearer token, when set.
    pub admin_token: Option<Arc<str>>,
    /// The SFU's figures (zero with voice off).
    pub voice_stats: Arc<crate::voice::VoiceStats>,
}

impl AdminState {
    /// Whether Redis is needed and not connected: publications cannot reach anyone.
    fn redis_down(&self) -> bool {
        self.redis_configured && !self.ingestor_stats.redis_connected.load(Ordering::Relaxed)
    }

    /// With `--proxy-in-ready`: whether the backend cannot be reached.
    fn backend_down(&self) -> bool {
        self.backend_in_ready && self.proxy_stats.unreachable()
    }

    /// Ready: not draining, connected to Redis when it is configured, and reaching the
    /// backend when `/ready` is to say so.
    fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && !self.redis_down() && !self.backend_down()
    }
}

pub fn router(state: AdminState) -> Router {
    // Every route that changes something goes here, behind the admin token.
    let mutating =
        Router::new()
            .route("/publish", post(publish))
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                require_admin_token,
            ));
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(mutating)
        .with_state(state)
}

/// With `--admin-token` set: 401 unless the request carries `Authorization: Bearer
/// <token>`.
async fn require_admin_token(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Response {
    match &state.admin_token {
        Some(token) if !bearer_matches(request.headers(), token) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "this route needs the admin token: Authorization: Bearer <token>\n",
        )
            .into_response(),
        _ => next.run(request).await,
    }
}

/// Whether `headers` carry `Authorization: Bearer <expected>`. The comparison takes
/// the same time wherever the first difference is, so that timing does not reveal
/// the token byte by byte.
fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
    else {
        return false;
    };
    let (given, expected) = (given.as_bytes(), expected.as_bytes());
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// Whether the body is declared JSON: `application/json`, parameters (`; charset=…`)
/// allowed, any case.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

async fn ready(State(state): State<AdminState>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else if state.redis_down() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: Redis unavailable\n",
        )
            .into_response()
    } else if state.backend_down() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: backend unreachable\n",
        )
            .into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// `POST /publish {topic, op, d, exclude_user?}` → 202 once handed to the ingestor
/// (which publishes it through Redis when configured, so that every node delivers it);
/// 415 unless the body is declared `application/json` (see the module's doc); 503
/// while Redis is configured but down, since the publication would reach no one.
async fn publish(State(state): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    if !is_json(&headers) {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json\n",
        )
            .into_response();
    }
    if state.redis_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "Redis unavailable\n").into_response();
    }
    let mut body = body.to_vec();
    let publication = match Publication::from_admin_body(&mut body, state.max_message_size) {
        Ok(publication) => publication,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    match state
        .ingestor
        .send_async(IngestorCommand::Publish(publication))
        .await
    {
        Ok(()) => (StatusCode::ACCEPTED, "{\"accepted\":true}\n").into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "ingestor stopped\n").into_response(),
    }
}

/// Prometheus text format, rendered by [`crate::metrics`].
async fn metrics(State(state): State<AdminState>) -> Response {
    let out = crate::metrics::render(
        &state.shard_stats,
        &state.ingestor_stats,
        &state.proxy_stats,
        &state.voice_stats,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// Binds the admin address (before anything else starts, so that a busy or wrong
/// address is a bad setting, exit 2, named with the address).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ConfigError> {
    let bound = std::net::TcpListener::bind(addr).and_then(|listener| {
        listener.set_nonblocking(true)?;
        Ok(listener)
    });
    bound.map_err(|e| ConfigError::new("admin", format!("cannot listen on {addr}: {e}")))
}

/// Serves the admin API on `listener` (from [`bind`]), on its own thread (a
/// current-thread tokio runtime) until `stop` fires (or its sender is dropped);
/// requests in flight are answered first.
pub fn spawn(
    listener: std::net::TcpListener,
    state: AdminState,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<(SocketAddr, std::thread::JoinHandle<()>)> {
    let local = listener.local_addr()?;
    let handle = std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, "admin runtime failed to start");
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => {
                        tracing::error!(error = %e, "admin listener failed");
                        return;
                    }
                };
                let stopped = async {
                    let _ = stop.await;
                };
                if let Err(e) = axum::serve(listener, router(state))
                    .with_graceful_shutdown(stopped)
                    .await
                {
                    tracing::error!(error = %e, "admin server stopped");
                }
            });
        })?;
    Ok((local, handle))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn only_json_bodies_are_publications() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
        ] {
            assert!(is_json(&headers(&[(header::CONTENT_TYPE, ok)])), "{ok}");
        }
        // What a page can send cross-origin without a preflight, and the rest.
        for refused in [
            "text/plain",
            "text/plain; charset=utf-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonp",
        ] {
            assert!(
                !is_json(&headers(&[(header::CONTENT_TYPE, refused)])),
                "{refused}"
            );
        }
        assert!(!is_json(&HeaderMap::new()), "no Content-Type");
    }

    #[test]
    fn bearer_token_must_match_exactly() {
        let token = "0123456789abcdef-admin";
        let with = |value| headers(&[(header::AUTHORIZATION, value)]);
        assert!(bearer_matches(
            &with("Bearer 0123456789abcdef-admin"),
            token
        ));
        assert!(bearer_matches(
            &with("bearer 0123456789abcdef-admin"),
            token
        ));
        for wrong in [
            "Bearer 0123456789abcdef-admiN",
            "Bearer 0123456789abcdef-admin2",
            "Bearer 0123456789abcdef",
            "Basic 0123456789abcdef-admin",
            "0123456789abcdef-admin",
            "Bearer",
        ] {
            assert!(!bearer_matches(&with(wrong), token), "{wrong}");
        }
        assert!(!bearer_matches(&HeaderMap::new(), token));
    }
}
