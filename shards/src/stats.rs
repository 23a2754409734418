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
    /// Server closes by reason (close code in the docs of each).
    /// 1009: a client message over the size limit.
    closes_message_too_big,
    /// 1012: drain.
    closes_service_restart,
    /// 4003: an op before `ready`.
    closes_not_authenticated,
    /// 4004: `identify` with a bad token.
    closes_authentication_failed,
    /// 4005: `identify` twice.
    closes_already_authenticated,
    /// 4006: the token expired.
    closes_token_expired,
    /// 4008: flooding.
    closes_rate_limited,
    /// 4009: no identify or no heartbeat.
    closes_session_timed_out,
    /// 4010: the outbound queue stayed over budget.
    closes_slow_consumer,
    /// 1002/1007: WebSocket protocol violations.
    closes_protocol_error,
    /// Events that arrived for a topic with no local subscriber left.
    unrouted_events,
    /// Interest changes that could not be handed to the ingestor at once (retried).
    interest_backlog,
}

impl ShardStats {
    /// The per-reason counter of a server close.
    pub fn close_counter(&self, code: u16) -> Option<&AtomicU64> {
        Some(match code {
            1009 => &self.closes_message_too_big,
            1012 => &self.closes_service_restart,
            4003 => &self.closes_not_authenticated,
            4004 => &self.closes_authentication_failed,
            4005 => &self.closes_already_authenticated,
            4006 => &self.closes_token_expired,
            4008 => &self.closes_rate_limited,
            4009 => &self.closes_session_timed_out,
            4010 => &self.closes_slow_consumer,
            1002 | 1007 => &self.closes_protocol_error,
            _ => return None,
        })
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}
