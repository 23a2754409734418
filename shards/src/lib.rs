//! coregate's shards: everything that lives on one core.
//!
//! The crate is split in two: sans-IO parts (no glommio, no socket, no clock: they take
//! bytes and `now`, and are unit-tested with a virtual clock) and the glommio driver
//! that runs them.
//!
//! Sans-IO:
//! - [`session`]: one connection's protocol as a state machine: bytes in, frames out,
//!   deadlines, closes, and the events its shard acts on; every close decided in
//!   [`session::close`], rate limits in [`session::allowance`], the lanes in
//!   [`session::outbox`];
//! - [`hub`]: a shard's connections under generational keys, its topic table
//!   ([`hub::topic_table`]), membership checks and routing;
//! - [`upgrade`]: the HTTP upgrade request (path, subprotocol, token);
//! - [`ws`]: WebSocket framing over tungstenite without tungstenite owning the socket;
//! - [`admission`]: node-wide connection limits (per node, per address, per user);
//! - [`auth`]: the verifier trait the binary implements with JWTs;
//! - [`authorizer`]: the optional Redis membership gate on `subscribe`, cached per shard;
//! - [`backend`]: calls to the application backend (`rpc`), handed to the node;
//! - [`voice`]: voice signaling, handed to the node's SFU;
//! - [`config`]: the settings every shard reads;
//! - [`bus`]: the queues between shards and the node's ingestor;
//! - [`rate_limit`]: the token bucket behind the rate limits;
//! - [`stats`]: per-shard counters summed at scrape time.
//!
//! The driver ([`driver`]): executors and placement, the accept loop and upgrade I/O,
//! one task per connection moving bytes between its socket and its session, the router,
//! the sweeper, the batch ticker and the drain.
//!
//! `testing` (tests only) is the harness that drives a hub and its sessions with literal
//! bytes and a virtual clock, like quinn-proto's `Pair`.

// `shard_settings!` names this crate's types by their full path, which must resolve
// inside the crate as well as outside.
extern crate self as coregate_shards;

pub mod admission;
pub mod auth;
pub mod authorizer;
pub mod backend;
pub mod bus;
pub mod config;
pub mod driver;
pub mod history;
pub mod hub;
pub mod rate_limit;
pub mod session;
pub mod stats;
pub mod upgrade;
pub mod voice;
pub mod ws;

#[cfg(test)]
mod testing;

pub use auth::{AuthError, Identity, IdentityExtras, TokenVerifier};
pub use authorizer::{MembershipCheck, MembershipError, SharedAuthorizer};
pub use backend::{
    ConnectAnswer, ConnectCall, ConnectGrant, ConnectRefusal, RpcAnswer, RpcCall, RpcFailure,
    SharedBackend,
};
pub use bus::{
    shard_inbox, HandOffError, IngestorCommand, IngestorSender, InterestChange, PresenceAnswer,
    PresenceSignal, ShardMessage, ShardSender, ShardSet, SharedDelivery, TypingAction,
    TypingSignal, WireMessage, MAX_SHARDS,
};
pub use config::ShardConfig;
pub use driver::{start_shards, RunningShards, ShardPlacement, StartError};
pub use hub::NodeLinks;
pub use stats::{ShardStats, StatsSnapshot};
pub use voice::{SharedVoice, VoiceAction, VoiceRequest};
