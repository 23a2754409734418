//! Calls to the application backend (PROTOCOL.md §8) as a shard sees them. A shard never
//! makes an HTTP call itself: a client's `rpc` becomes an [`RpcCall`] that the hub hands
//! to the node's backend client (the binary's `proxy` thread, which owns the HTTP
//! client, the timeout and the method allow-list) over a bounded flume queue; the
//! answer comes back through the shard's inbox as a
//! [`ShardMessage::RpcResult`](crate::ShardMessage::RpcResult), so a slow or dead
//! backend holds no shard and no task.

use crate::hub::ConnKey;

/// One client `rpc`, on its way to the backend.
#[derive(Debug)]
pub struct RpcCall {
    /// Where the answer goes: the shard and the connection (its generational key, so a
    /// newer connection on the same slot never gets it).
    pub shard_id: usize,
    pub conn: ConnKey,
    /// The request's `ref`, echoed by `rpc_result`.
    pub r#ref: Option<u64>,
    pub user_id: String,
    pub session_id: String,
    pub method: String,
    pub d: serde_json::Value,
}

/// Why an `rpc` got no `rpc_result`: sent to the client as `error {code, message}`.
/// `code` is one of PROTOCOL.md §7's (`unavailable`, `forbidden`, `limit`) or the
/// backend's own, passed through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcFailure {
    pub code: String,
    pub message: String,
}

impl RpcFailure {
    /// The gateway could not get an answer (no backend configured, timed out, down).
    pub fn unavailable(message: impl Into<String>) -> RpcFailure {
        RpcFailure {
            code: coregate_protocol::ErrorCode::Unavailable
                .as_str()
                .to_owned(),
            message: message.into(),
        }
    }
}

/// The backend's answer to one [`RpcCall`]: its `d`, or why there is none.
pub type RpcAnswer = Result<serde_json::Value, RpcFailure>;

/// The backend client's queue is full, or the client has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendBusy;

/// The node's backend client, as every shard sees it: the sending side of its queue.
#[derive(Debug, Clone)]
pub struct SharedBackend {
    rpc: flume::Sender<RpcCall>,
}

impl SharedBackend {
    pub fn new(rpc: flume::Sender<RpcCall>) -> SharedBackend {
        SharedBackend { rpc }
    }

    /// Hands `call` to the backend client; fails when the queue is full or the client
    /// has stopped, for the caller to answer `unavailable` at once.
    pub fn send(&self, call: RpcCall) -> Result<(), BackendBusy> {
        self.rpc.try_send(call).map_err(|_| BackendBusy)
    }
}
