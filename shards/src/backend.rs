//! Calls to the application backend (PROTOCOL.md §8) as a shard sees them. A shard never
//! makes an HTTP call itself: it hands each call to the node's backend client (the
//! binary's `proxy` thread, which owns the HTTP client, the timeouts and the method
//! allow-list) over a bounded flume queue.
//!
//! - A client's `rpc` becomes an [`RpcCall`]; the answer comes back through the shard's
//!   inbox as a [`ShardMessage::RpcResult`](crate::ShardMessage::RpcResult), so a slow
//!   or dead backend holds no shard and no task.
//! - A new connection's upgrade, with `--proxy-connect-url`, becomes a [`ConnectCall`]
//!   that its handshake task awaits (the handshake holds nothing of the session yet).
//! - `--authorizer proxy` uses the membership gate of [`crate::authorizer`], its checks
//!   answered by the same backend client.

use std::sync::Arc;

use coregate_protocol::{Topic, TopicPatterns};

use crate::auth::{Identity, IdentityExtras};
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
    /// The connection's `meta` from the connect call, if any.
    pub meta: Option<serde_json::Value>,
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

/// A new connection, put to the backend before it is upgraded (PROTOCOL.md §8).
#[derive(Debug)]
pub struct ConnectCall {
    /// The verified token's `sub`, when the upgrade carried a token.
    pub user_id: Option<String>,
    /// The request's allow-listed headers (names lowercase), `Cookie` among them.
    pub headers: Vec<(String, String)>,
    /// The query parameters but `token`.
    pub query: Vec<(String, String)>,
    /// The client's token, only with `--proxy-forward-token`.
    pub token: Option<String>,
    pub reply: flume::Sender<ConnectAnswer>,
}

/// The backend accepted the connection: who it is, and the `data` for `ready`. What
/// the backend leaves out comes from the token, when there was one.
#[derive(Debug, Default)]
pub struct ConnectGrant {
    pub user_id: String,
    pub name: Option<String>,
    /// The `topics` claim's equivalent.
    pub topics: Option<TopicPatterns>,
    /// The `presence` claim's equivalent.
    pub presence: Option<Vec<Topic>>,
    /// For `ready.d.data`.
    pub data: Option<serde_json::Value>,
    /// Kept by the gateway and sent back with each `rpc` of the connection.
    pub meta: Option<serde_json::Value>,
}

impl ConnectGrant {
    /// The connection's identity: the backend's answer over the verified token's. A
    /// connection without a token has no expiry (its session is the backend's to end).
    pub fn into_identity(self, token: Option<Identity>) -> (Identity, Option<serde_json::Value>) {
        let (name, expires_at, topics, presence) = match token {
            Some(t) => {
                let presence = t.presence_claim().to_vec();
                (t.name, t.expires_at, t.topics, presence)
            }
            None => (None, u64::MAX, TopicPatterns::default(), Vec::new()),
        };
        let identity = Identity {
            user_id: self.user_id.into(),
            name: self.name.map(String::into_boxed_str).or(name),
            expires_at,
            topics: self.topics.unwrap_or(topics),
            extras: IdentityExtras::boxed(self.presence.unwrap_or(presence), self.meta),
        };
        (identity, self.data)
    }
}

/// Why the backend's connect call did not accept the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// The backend refused it (`{error: {code, message}}`): 401 before the upgrade when
    /// the request carried no token, 4004 after `hello` when it did.
    Denied { code: String, message: String },
    /// No answer (down, slow, unusable): `reconnect` and 4000 after `hello`.
    Unavailable(String),
}

/// The backend's answer to one [`ConnectCall`].
pub type ConnectAnswer = Result<ConnectGrant, ConnectRefusal>;

/// The backend client's queue is full, or the client has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendBusy;

/// The node's backend client, as every shard sees it: the sending sides of its queues,
/// one per configured call.
#[derive(Debug, Clone, Default)]
pub struct SharedBackend {
    rpc: Option<flume::Sender<RpcCall>>,
    connect: Option<flume::Sender<ConnectCall>>,
    /// The headers a connect call carries (lowercase), `cookie` by default.
    connect_headers: Arc<[String]>,
    /// Whether a connect call carries the client's token.
    forward_token: bool,
}

impl SharedBackend {
    /// `rpc` calls go to `rpc`.
    pub fn with_rpc(mut self, rpc: flume::Sender<RpcCall>) -> SharedBackend {
        self.rpc = Some(rpc);
        self
    }

    /// New connections are put to `connect`, with these request headers, and their
    /// token when `forward_token`.
    pub fn with_connect(
        mut self,
        connect: flume::Sender<ConnectCall>,
        headers: impl IntoIterator<Item = String>,
        forward_token: bool,
    ) -> SharedBackend {
        self.connect = Some(connect);
        self.forward_token = forward_token;
        self.connect_headers = headers
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        self
    }

    pub fn has_rpc(&self) -> bool {
        self.rpc.is_some()
    }

    /// Hands `call` to the backend client; fails when the queue is full, the client
    /// has stopped or no rpc URL is configured, for the caller to answer
    /// `unavailable` at once.
    pub fn send(&self, call: RpcCall) -> Result<(), BackendBusy> {
        let rpc = self.rpc.as_ref().ok_or(BackendBusy)?;
        rpc.try_send(call).map_err(|_| BackendBusy)
    }

    /// Whether new connections are put to the backend.
    pub fn decides_connects(&self) -> bool {
        self.connect.is_some()
    }

    /// The headers a connect call carries.
    pub fn connect_headers(&self) -> &[String] {
        &self.connect_headers
    }

    /// Whether a connect call carries the client's token.
    pub fn forwards_token(&self) -> bool {
        self.forward_token
    }

    /// Puts a new connection to the backend; the answer comes on the call's `reply`.
    pub fn send_connect(&self, call: ConnectCall) -> Result<(), BackendBusy> {
        let connect = self.connect.as_ref().ok_or(BackendBusy)?;
        connect.try_send(call).map_err(|_| BackendBusy)
    }
}
