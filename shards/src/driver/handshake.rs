//! A new socket's HTTP upgrade: read the request within the handshake timeout, check
//! the node's limits and the token (before the upgrade, so a bad token gets a 401),
//! put the connection to the backend when its connect call is configured, and answer;
//! an accepted connection is then registered with the hub and handed to its connection
//! task.

use std::rc::Rc;
use std::time::Instant;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use super::{connection, LocalShard};
use crate::admission::{ConnectionSlot, Denied};
use crate::auth::Identity;
use crate::backend::{ConnectAnswer, ConnectCall, ConnectRefusal, SharedBackend};
use crate::session::{CloseReason, Start};
use crate::stats::ShardStats;
use crate::upgrade::{self, Refusal, UpgradeRequest};

/// `Retry-After` of a node at its maximum of connections: long enough for others to close.
const NODE_FULL_RETRY_AFTER_SECS: u64 = 5;

/// Serves one accepted TCP connection's upgrade, then hands the WebSocket session to
/// a task of its own.
///
/// A task's future is allocated once, at the size of its largest state, and lives as
/// long as the task: the handshake (request parsing, timers, the response) ends with
/// this task, so an idle connection keeps only what its session needs.
pub(super) async fn serve_connection(shard: Rc<LocalShard>, stream: TcpStream) {
    if let Some(upgraded) = upgrade_connection(&shard, stream).await {
        glommio::spawn_local(connection::session_task(shard, upgraded)).detach();
    }
}

/// A connection whose upgrade succeeded: the 101 response has been written.
pub(super) struct Upgraded {
    pub(super) stream: TcpStream,
    pub(super) encoding: coregate_protocol::Encoding,
    /// Its place in the node's maximum, held until the connection ends.
    pub(super) slot: ConnectionSlot,
    /// How its session begins: `identify` in-band, ready, or closed.
    pub(super) start: Start,
}

/// Reads and answers the upgrade request; `None` when it was refused or the peer left.
async fn upgrade_connection(shard: &LocalShard, mut stream: TcpStream) -> Option<Upgraded> {
    let _ = stream.set_nodelay(true);
    if shard.config.socket_send_buffer > 0 {
        set_send_buffer(&stream, shard.config.socket_send_buffer);
    }
    match admit_upgrade(shard, &mut stream).await {
        Ok((request, slot, start)) => {
            let response = upgrade::accept_response(&request);
            futures_lite::AsyncWriteExt::write_all(&mut stream, &response)
                .await
                .ok()?;
            ShardStats::add(&shard.stats.upgrades_accepted, 1);
            Some(Upgraded {
                stream,
                encoding: request.encoding,
                slot,
                start,
            })
        }
        Err(Some(refusal)) => {
            ShardStats::add(shard.stats.refusal_counter(&refusal), 1);
            write_and_close(&mut stream, &refusal.response()).await;
            None
        }
        Err(None) => None,
    }
}

/// An upgrade request that passed every check, with the place it holds and how its
/// session begins.
type Admitted = (UpgradeRequest, ConnectionSlot, Start);

/// Reads the upgrade request within the handshake timeout and checks it: the node's
/// and the address's limits, then the token and its user's limit. `Err(None)`: the
/// peer went away or was too slow, and gets no answer.
async fn admit_upgrade(
    shard: &LocalShard,
    stream: &mut TcpStream,
) -> Result<Admitted, Option<Refusal>> {
    let peer = stream.peer_addr().map_err(|_| None)?;
    let handshake = read_upgrade(stream, &shard.config.path);
    let timeout = async {
        glommio::timer::sleep(shard.config.handshake_timeout).await;
        Err(None)
    };
    let (request, raw) = futures_lite::future::or(handshake, timeout).await?;
    let slot = shard
        .admission
        .admit(peer.ip(), Instant::now())
        .map_err(|denied| Some(refusal_for(denied)))?;
    let token = match request.token.as_deref() {
        None => None,
        Some(token) => Some(
            shard
                .verifier
                .verify(token)
                .map_err(|e| Some(Refusal::Unauthorized(e.to_string())))?,
        ),
    };
    let backend = shard.backend.borrow().clone();
    let start = match &backend {
        Some(backend) if backend.decides_connects() => {
            let user_id = token.as_ref().map(|t| t.user_id.to_string());
            let forwarded = request.token.clone().filter(|_| backend.forwards_token());
            match ask_backend(shard, backend, &raw, user_id, forwarded).await {
                Ok(grant) => ready(shard, grant.into_identity(token))?,
                // Nothing else vouched for the request: refused before the upgrade.
                Err(ConnectRefusal::Denied { message, .. }) if token.is_none() => {
                    return Err(Some(Refusal::Unauthorized(message)));
                }
                Err(ConnectRefusal::Denied { .. }) => {
                    Start::Close(CloseReason::AuthenticationFailed)
                }
                Err(ConnectRefusal::Unavailable(reason)) => {
                    tracing::debug!(reason, "connect call failed");
                    Start::Close(CloseReason::BackendUnavailable)
                }
            }
        }
        _ => match token {
            Some(identity) => ready(shard, (identity, None))?,
            None => Start::Identify,
        },
    };
    Ok((request, slot, start))
}

/// An authenticated connection: its user's place is claimed (or the upgrade refused).
fn ready(
    shard: &LocalShard,
    (identity, data): (Identity, Option<serde_json::Value>),
) -> Result<Start, Option<Refusal>> {
    let user = shard
        .admission
        .claim_user(identity)
        .map_err(|denied| Some(refusal_for(denied)))?;
    Ok(Start::Ready { user, data })
}

/// The backend's connect call for this upgrade request (`raw`): made by the node's
/// backend client, awaited here, where nothing of a session exists yet. The client
/// answers within `--proxy-timeout`; the handshake timeout bounds the wait besides.
async fn ask_backend(
    shard: &LocalShard,
    backend: &SharedBackend,
    raw: &[u8],
    user_id: Option<String>,
    token: Option<String>,
) -> ConnectAnswer {
    let details = upgrade::connect_details(raw, backend.connect_headers());
    let (reply, answer) = flume::bounded(1);
    let call = ConnectCall {
        user_id,
        headers: details.headers,
        query: details.query,
        token,
        reply,
    };
    if backend.send_connect(call).is_err() {
        return Err(ConnectRefusal::Unavailable(
            "the backend client is overloaded".into(),
        ));
    }
    let wait = async {
        answer.recv_async().await.unwrap_or_else(|_| {
            Err(ConnectRefusal::Unavailable(
                "the backend client stopped".into(),
            ))
        })
    };
    let limit = async {
        glommio::timer::sleep(shard.config.handshake_timeout).await;
        Err(ConnectRefusal::Unavailable("no answer in time".into()))
    };
    futures_lite::future::or(wait, limit).await
}

/// The HTTP answer to an admission refusal.
fn refusal_for(denied: Denied) -> Refusal {
    match denied {
        Denied::NodeFull => Refusal::Unavailable {
            retry_after_secs: NODE_FULL_RETRY_AFTER_SECS,
        },
        Denied::IpRate { retry_after } => Refusal::TooManyRequests {
            retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
        },
        Denied::UserLimit => Refusal::UserLimit,
    }
}

/// Reads the HTTP upgrade request; with it, its raw bytes (for the connect call).
/// `Err(None)`: the peer went away.
async fn read_upgrade(
    stream: &mut TcpStream,
    path: &str,
) -> Result<(UpgradeRequest, Vec<u8>), Option<Refusal>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = vec![0u8; 1024];
    loop {
        let n = futures_lite::AsyncReadExt::read(stream, &mut chunk)
            .await
            .map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(request) = upgrade::parse_request(&buf, path).map_err(Some)? {
            return Ok((request, buf));
        }
    }
}

/// Writes a complete HTTP response (refusals) and closes.
async fn write_and_close(stream: &mut TcpStream, response: &[u8]) {
    let _ = stream.write_all(response).await;
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
}

/// Sets `SO_SNDBUF` (see `ShardConfig::socket_send_buffer`); best effort.
fn set_send_buffer(stream: &TcpStream, bytes: usize) {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the descriptor belongs to `stream`, which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    if let Err(e) = socket2::SockRef::from(&fd).set_send_buffer_size(bytes) {
        tracing::debug!(error = %e, "SO_SNDBUF not set");
    }
}
