//! Settings every shard reads; built by the binary from its configuration.

use std::time::Duration;

/// What a shard needs to know to serve connections. Defaults are PROTOCOL.md's.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// The WebSocket endpoint path (default `/ws`).
    pub path: String,
    /// How often clients should ping; silence for twice this closes 4009 (default 30 s).
    pub heartbeat_interval: Duration,
    /// How long an unauthenticated connection may take to `identify` (default 5 s).
    pub identify_timeout: Duration,
    /// Topics one connection may hold, the automatic ones included (default 128).
    pub max_subscriptions: usize,
    /// Largest client message; larger closes 1009 (default 64 KiB).
    pub max_message_size: usize,
    /// Largest outgoing frame when batching events (default 64 KiB).
    pub max_frame_size: usize,
    /// How long events may wait to be joined into fewer, larger frames (default 0:
    /// written as soon as the connection's task runs). Trades latency for fewer writes.
    pub batch_delay: Duration,
    /// `SO_SNDBUF` of every accepted socket (default `None`: the kernel autotunes it,
    /// to several MiB per socket on fast paths). Bounds the kernel's memory per
    /// connection, and makes a stalled reader's backlog reach the connection's own
    /// queue, where the budget and the slow-consumer close apply, that much sooner.
    pub socket_send_buffer: Option<usize>,
    /// Bytes of queued output a connection may hold before events are shed (default 1 MiB).
    pub outbound_budget: usize,
    /// How long a connection may stay over its budget before it is closed 4010 (default 5 s).
    pub slow_client_grace: Duration,
    /// Capacity of each shard's inbox from the ingestor, in events (default 65,536).
    pub inbox_capacity: usize,
    /// How long the HTTP upgrade request may take to arrive (default 10 s).
    pub handshake_timeout: Duration,
    /// Client events allowed per `rate_limit_window` on one connection (default 120).
    pub rate_limit_events: u32,
    /// The window of `rate_limit_events` (default 60 s).
    pub rate_limit_window: Duration,
    /// Events a connection may send at once before the rate applies (default 20).
    pub rate_limit_burst: u32,
    /// Connections the node holds at most, all shards together; more get 503 with
    /// `Retry-After` (default 0: no limit but the process's descriptors).
    pub max_connections: usize,
    /// Connection attempts per second one IP address may make; more get 429
    /// (default 0: no limit).
    pub ip_connect_rate: u32,
    /// Attempts one IP address may make at once before `ip_connect_rate` applies
    /// (default 0: the rate itself).
    pub ip_connect_burst: u32,
    /// Connections one user may hold at once; more get 429 at upgrade or close 4011
    /// after `identify` (default 10; 0: no limit).
    pub max_connections_per_user: usize,
    /// Refused events in a row after which a flooding connection is closed 4008
    /// (default 20).
    pub flood_close_after: u32,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            path: "/ws".to_owned(),
            heartbeat_interval: Duration::from_secs(30),
            identify_timeout: Duration::from_secs(5),
            max_subscriptions: 128,
            max_message_size: 64 * 1024,
            max_frame_size: 64 * 1024,
            batch_delay: Duration::ZERO,
            socket_send_buffer: None,
            outbound_budget: 1024 * 1024,
            slow_client_grace: Duration::from_secs(5),
            inbox_capacity: 65_536,
            handshake_timeout: Duration::from_secs(10),
            rate_limit_events: 120,
            rate_limit_window: Duration::from_secs(60),
            rate_limit_burst: 20,
            flood_close_after: 20,
            max_connections: 0,
            ip_connect_rate: 0,
            ip_connect_burst: 0,
            max_connections_per_user: 10,
        }
    }
}

impl ShardConfig {
    /// How often the shard's sweeper checks deadlines: fine enough for the shortest
    /// timeout configured, never busier than every 50 ms.
    pub fn sweep_interval(&self) -> Duration {
        let finest = self
            .heartbeat_interval
            .min(self.identify_timeout)
            .min(self.slow_client_grace);
        (finest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}
