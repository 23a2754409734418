//! The admin HTTP API: `/health`, `/ready`, `/publish`, `/metrics`. It runs on its
//! own thread and never touches shard state: it reads the shards' counters and
//! hands publications to the ingestor.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
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
    /// Set on SIGTERM: the node is going away.
    pub draining: Arc<AtomicBool>,
    /// Whether the node is fed through Redis (then it is ready only while connected).
    pub redis_configured: bool,
    pub max_message_size: usize,
}

impl AdminState {
    /// Whether Redis is needed and not connected: publications cannot reach anyone.
    fn redis_down(&self) -> bool {
        self.redis_configured && !self.ingestor_stats.redis_connected.load(Ordering::Relaxed)
    }

    /// Ready: not draining, and connected to Redis when it is configured.
    fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && !self.redis_down()
    }
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/publish", post(publish))
        .route("/metrics", get(metrics))
        .with_state(state)
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
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// `POST /publish {topic, op, d, exclude_user?}` → 202 once handed to the ingestor
/// (which publishes it through Redis when configured, so that every node delivers it);
/// 503 while Redis is configured but down, since the publication would reach no one.
async fn publish(State(state): State<AdminState>, body: Bytes) -> Response {
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
    let out = crate::metrics::render(&state.shard_stats, &state.ingestor_stats);
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
