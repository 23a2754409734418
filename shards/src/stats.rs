//! Per-shard counters. Each shard writes only its own (relaxed, uncontended, on its
//! own cache lines); the admin side reads every shard's and sums them at scrape time.
//!
//! One writer per counter means an update is a plain load and store, not a locked
//! read-modify-write: the hot path pays no more than for a local variable.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::upgrade::Refusal;

macro_rules! shard_stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counters of one shard; see the module docs.
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub struct ShardStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// Publish→write latency of the events this shard wrote.
            pub publish_to_write: LatencyHistogram,
        }

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
    /// Of them, idle ones parked without a task of their own (a gauge).
    parked_connections,
    /// Upgrades that became WebSocket connections.
    upgrades_accepted,
    /// Upgrades refused, by reason (exported as one counter with a `reason` label).
    /// 404: not the WebSocket path.
    upgrades_refused_not_found,
    /// 400/431: not a valid WebSocket upgrade, or no acceptable subprotocol.
    upgrades_refused_bad_request,
    /// 401: the token did not verify.
    upgrades_refused_unauthorized,
    /// 429: too many attempts from one address.
    upgrades_refused_ip_rate,
    /// 429: the user holds its maximum of connections.
    upgrades_refused_user_limit,
    /// 503: the node holds its maximum of connections, or is draining.
    upgrades_refused_unavailable,
    /// Client messages decoded, by op class (exported with a `class` label).
    /// identify, ping, refresh.
    messages_in_control,
    /// subscribe, unsubscribe.
    messages_in_subscription,
    /// typing_start, typing_stop.
    messages_in_typing,
    /// Every other op (voice, presence, history).
    messages_in_other,
    /// Messages written, by class: replies and control messages on the priority lane.
    messages_out_control,
    /// Events written from the normal lane (each event of a batch counts).
    messages_out_event,
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
    /// 4011: `identify` for a user that holds its maximum of connections.
    closes_too_many_connections,
    /// 4009: no identify or no heartbeat.
    closes_session_timed_out,
    /// 4010: the outbound queue stayed over budget.
    closes_slow_consumer,
    /// 1002/1007: WebSocket protocol violations.
    closes_protocol_error,
    /// 4000: the backend's connect call could not be made.
    closes_unknown_error,
    /// Any other close code (none is sent today; kept so that every close counts).
    closes_other,
    /// Events that arrived for a topic with no local subscriber left.
    unrouted_events,
    /// `rpc` calls answered `unavailable` at once because the backend client's queue
    /// was full (the backend is slower than the calls come).
    backend_calls_refused,
    /// Voice ops answered `voice_error {code: unavailable}` at once because the SFU's
    /// queue was full.
    voice_requests_refused,
    /// Interest changes that could not be handed to the ingestor at once (retried).
    interest_backlog,
    /// The most bytes one connection's outbound queue has held (a high-water gauge).
    outbox_high_water_bytes,
    /// The most events the shard's inbox from the ingestor has held (a high-water gauge).
    inbox_high_water_events,
}

/// Upper bounds, in microseconds, of the publish→write latency histogram's buckets.
pub const LATENCY_BUCKETS_US: [u64; 13] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// Time from the node receiving a publication to its event being handed to a
/// subscriber's socket; one per shard, summed at scrape time like the counters.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per bucket of [`LATENCY_BUCKETS_US`], then one for everything slower.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    /// Records `count` events that waited `waited` (events of one batch share it).
    pub fn observe(&self, waited: std::time::Duration, count: u64) {
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        ShardStats::add(&self.buckets[bucket], count);
        ShardStats::add(&self.sum_us, us.saturating_mul(count));
    }

    /// Events per bucket (not cumulative), and the sum of their latencies in µs.
    pub fn snapshot(&self) -> ([u64; LATENCY_BUCKETS_US.len() + 1], u64) {
        (
            std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            self.sum_us.load(Ordering::Relaxed),
        )
    }
}

impl ShardStats {
    /// The per-class counter of a client message with op `op`.
    pub fn message_in_counter(&self, op: &str) -> &AtomicU64 {
        match op {
            "identify" | "ping" | "refresh" => &self.messages_in_control,
            "subscribe" | "unsubscribe" => &self.messages_in_subscription,
            "typing_start" | "typing_stop" => &self.messages_in_typing,
            _ => &self.messages_in_other,
        }
    }

    /// The per-reason counter of a refused upgrade.
    pub fn refusal_counter(&self, refusal: &Refusal) -> &AtomicU64 {
        match refusal {
            Refusal::NotFound => &self.upgrades_refused_not_found,
            Refusal::BadRequest(_) | Refusal::TooLarge => &self.upgrades_refused_bad_request,
            Refusal::Unauthorized(_) => &self.upgrades_refused_unauthorized,
            Refusal::TooManyRequests { .. } => &self.upgrades_refused_ip_rate,
            Refusal::UserLimit => &self.upgrades_refused_user_limit,
            Refusal::Unavailable { .. } => &self.upgrades_refused_unavailable,
        }
    }

    /// Adds to a counter of the calling shard's own (see the module docs).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }
    /// Raises a high-water gauge of the calling shard's own to `value` if it is higher.
    pub fn raise(gauge: &AtomicU64, value: u64) {
        if value > gauge.load(Ordering::Relaxed) {
            gauge.store(value, Ordering::Relaxed);
        }
    }
}
