//! coregate's shards: everything that lives on one core.
//!
//! - [`shard`]: executors, placement, the listener and the per-shard tasks (router,
//!   sweeper, accept loop) and the shard's state;
//! - [`upgrade`]: the HTTP upgrade (path, subprotocol, token);
//! - [`conn`]: a connection's state and the task that drives its socket;
//! - [`session`]: what a connection does with each client message;
//! - [`topic_table`]: topic → local connections, owned by the shard (no locks);
//! - [`outbox`]: a connection's priority and normal lanes;
//! - [`ws`]: WebSocket framing over tungstenite without tungstenite owning the socket;
//! - [`bus`]: the queues between shards and the node's ingestor;
//! - [`admission`]: node-wide connection limits (per node, per address, per user);
//! - [`auth`]: the verifier trait the binary implements with JWTs;
//! - [`authorizer`]: the optional Redis membership gate on `subscribe`, cached per shard;
//! - [`rate_limit`]: the token bucket behind per-connection event limits;
//! - [`stats`]: per-shard counters summed at scrape time.

pub mod admission;
pub mod auth;
pub mod authorizer;
pub mod bus;
pub mod config;
pub mod conn;
pub mod outbox;
pub mod rate_limit;
mod session;
pub mod shard;
pub mod stats;
pub mod topic_table;
pub mod upgrade;
pub mod ws;

pub use auth::{AuthError, Identity, TokenVerifier};
pub use authorizer::{MembershipCheck, MembershipError, SharedAuthorizer};
pub use bus::{
    shard_inbox, HandOffError, IngestorCommand, IngestorSender, InterestChange, ShardMessage,
    ShardSender, ShardSet, SharedDelivery, WireMessage, MAX_SHARDS,
};
pub use config::ShardConfig;
pub use shard::{start_shards, RunningShards, ShardPlacement, StartError};
pub use stats::{ShardStats, StatsSnapshot};
