//! A new socket's HTTP upgrade: read the request within the handshake timeout, check
//! the node's limits and the token (before the upgrade, so a bad token gets a 401), and
//! answer; an accepted connection is then registered with the hub and handed to its
//! connection task.

use std::rc::Rc;
use std::time::Instant;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use super::{connection, LocalShard};
use crate::admission::{ConnectionSlot, Denied, UserSlot};
use crate::auth::Identity;
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
    /// Set when the token came with the upgrade; `None` means in-band `identify`.
    pub(super) identity: Option<(Identity, UserSlot)>,
}

/// Reads and answers the upgrade request; `None` when it was refused or the peer left.
async fn upgrade_connection(shard: &LocalShard, mut stream: TcpStream) -> Option<Upgraded> {
    let _ = stream.set_nodelay(true);
    if let Some(bytes) = shard.config.socket_send_buffer {
        set_send_buffer(&stream, bytes);
    }
    match admit_upgrade(shard, &mut stream).await {
        Ok((request, slot, identity)) => {
            let response = upgrade::accept_response(&request);
            futures_lite::AsyncWriteExt::write_all(&mut stream, &response)
                .await
                .ok()?;
            ShardStats::add(&shard.stats.upgrades_accepted, 1);
            Some(Upgraded {
                stream,
                encoding: request.encoding,
                slot,
                identity,
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

/// An upgrade request that passed every check, with the places it holds.
type Admitted = (UpgradeRequest, ConnectionSlot, Option<(Identity, UserSlot)>);

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
    let request = futures_lite::future::or(handshake, timeout).await?;
    let slot = shard
        .admission
        .admit(peer.ip(), Instant::now())
        .map_err(|denied| Some(refusal_for(denied)))?;
    let identity = match request.token.as_deref() {
        None => None,
        Some(token) => {
            let identity = shard
                .verifier
                .verify(token)
                .map_err(|e| Some(Refusal::Unauthorized(e.to_string())))?;
            let user_slot = shard
                .admission
                .claim_user(&identity.user_id)
                .map_err(|denied| Some(refusal_for(denied)))?;
            Some((identity, user_slot))
        }
    };
    Ok((request, slot, identity))
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

/// Reads the HTTP upgrade request. `Err(None)`: the peer went away.
async fn read_upgrade(
    stream: &mut TcpStream,
    path: &str,
) -> Result<UpgradeRequest, Option<Refusal>> {
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
            return Ok(request);
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
