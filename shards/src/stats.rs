//! Per-shard counters. Each shard writes only its own (relaxed, uncontended, on its
//! own cache lines); the admin side reads every shard's and sums them at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! shard_stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counters of one shard; see the module docs.
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub struct ShardStats { $($(#[$doc])* pub $name: AtomicU64,)* }

        /// A plain copy of a shard's counters.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct StatsSnapshot { $(pub $name: u64,)* }

        impl ShardStats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl std::ops::AddAssign for StatsSnapshot {
            fn add_assign(&mut self, other: StatsSnapshot) {
                $(self.$name += other.$name;)*
            }
        }

        impl StatsSnapshot {
            /// `(name, value)` for every counter, for the metrics exporter.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

shard_stats! {
    /// Connections open now (a gauge).
    connections,
    /// Upgrades that became WebSocket connections.
    upgrades_accepted,
    /// Upgrades refused with 4xx/5xx.
    upgrades_refused,
    /// Client messages decoded.
    messages_in,
    /// Client messages that could not be decoded or had an unknown op.
    messages_bad,
    /// Events queued for a subscriber.
    deliveries,
    /// WebSocket frames written.
    frames_out,
    /// Bytes written to sockets.
    bytes_out,
    /// Ephemeral events dropped from congested connections.
    shed_events,
    /// Connections closed by the server, any code.
    server_closes,
    /// Events that arrived for a topic with no local subscriber left.
    unrouted_events,
    /// Interest changes that could not be handed to the ingestor at once (retried).
    interest_backlog,
}

impl ShardStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}
