//! Settings every shard reads, each declared once.
//!
//! [`shard_settings!`](crate::shard_settings) holds the list: every setting's name,
//! type, default and doc comment, written once. This crate builds [`ShardConfig`]
//! (fields and `Default`) from it; the `coregate` binary builds its file keys,
//! `COREGATE_*` environment variables, flags and `--help` text from the same list. A
//! setting added to the list is therefore configurable and documented everywhere,
//! without being restated anywhere.
//!
//! Documentation convention for an entry: the first paragraph says what the setting
//! is (it is the one-line help and the README's table); the next ones say why its
//! default is what it is and what changing it trades. The default itself is never
//! written in the prose: it is appended from the declaration.

use std::time::Duration;

/// The shard settings, declared once.
///
/// `shard_settings!(callback! { tokens })` expands to
/// `callback! { tokens shard { entries } fixed { entries } }`, each entry being
/// `/// doc…  name: Type = default;`. `shard` holds the settings an operator sets
/// (the binary makes a file key, an environment variable and a flag of each);
/// `fixed` holds fields of [`ShardConfig`] that are deliberately not settable, each
/// saying why. Types are written with full paths: the callback may expand anywhere.
#[macro_export]
macro_rules! shard_settings {
    ($callback:ident ! { $($given:tt)* }) => {
        $callback! {
            $($given)*
            shard {
                /// The HTTP path clients upgrade on; requests for any other path get 404.
                path: ::std::string::String = "/ws".to_owned();

                /// How often clients should ping; silence for twice this closes 4009.
                ///
                /// Shorter finds dead peers (and frees what they hold) sooner, for more
                /// pings per idle connection; clients learn the value in `hello`.
                heartbeat_interval: ::std::time::Duration = Duration::from_secs(30);

                /// How long a connection that upgraded without a token has to `identify`.
                ///
                /// Until then it holds a socket and a slot but no user: short enough to
                /// shed abandoned sockets, long enough for a slow network's first message.
                identify_timeout: ::std::time::Duration = Duration::from_secs(5);

                /// Topics one connection may hold, the automatic ones included (at least 2).
                ///
                /// Bounds one connection's share of the shard's topic table.
                max_subscriptions: usize = 128;

                /// Largest client message, in bytes (at least 256); larger closes 1009.
                ///
                /// Clients send small control messages: a low bound limits what one
                /// peer can make the shard buffer and parse. Also the largest payload
                /// the ingestor accepts from Redis.
                max_message_size: usize = 64 * 1024;

                /// Largest outgoing frame when events are batched, in bytes (at least 1024).
                ///
                /// Events ready together go out in one frame up to this size: larger
                /// means fewer frames and writes, and more for a client to parse at once.
                max_frame_size: usize = 64 * 1024;

                /// How long events may wait to be joined into fewer, larger frames (at most 1s).
                ///
                /// 0: written as soon as the connection's task runs. Trades latency for
                /// fewer writes, which is what a loaded shard spends its time on.
                batch_delay: ::std::time::Duration = Duration::ZERO;

                /// `SO_SNDBUF` of every accepted socket, in bytes (the kernel doubles it); 0: the kernel autotunes it.
                ///
                /// Autotuning grows it to several MiB per socket on fast paths (loopback,
                /// a LAN), so a node's kernel memory under load had no bound: 2,000
                /// subscribers held 1.1 GB in send queues (BENCHMARKS.md, issue 17). 64 KiB
                /// bounds it to ~128 KiB per connection, beside the outbound budget; a
                /// stalled reader's backlog reaches the connection's own queue, where the
                /// budget and the slow-consumer close apply, that much sooner. It caps one
                /// connection's throughput at ~128 KiB per round trip (1.3 MB/s at 100 ms),
                /// far above what a real-time client receives.
                socket_send_buffer: usize = 64 * 1024;

                /// Bytes of queued output a connection may hold before its events are shed.
                ///
                /// Over it, ephemeral events are shed first; still over after
                /// `slow_client_grace`, the connection is closed 4010. Bounds memory per
                /// connection whatever a client reads. At least `max_frame_size`.
                outbound_budget: usize = 1024 * 1024;

                /// Bytes of replies and control frames a connection may have queued; more closes it 4008.
                ///
                /// Replies (`pong`, `error`, `subscribed`…) and WebSocket pongs go to the
                /// front of the queue and are never shed, so they need a bound of their
                /// own: a client whose replies pile up this high is not reading. Before
                /// `ready` a connection gets a fixed, much smaller bound. At least 4096.
                control_budget: usize = 64 * 1024;

                /// How long a connection may stay over its budget before it is closed 4010.
                ///
                /// Lets a client ride out a short stall (a pause, a network blip) without
                /// being dropped, while a reader that stopped is let go soon.
                slow_client_grace: ::std::time::Duration = Duration::from_secs(5);

                /// Events each shard's inbox from the ingestor holds; past it they are dropped.
                ///
                /// Absorbs bursts while a shard is busy. A slot holds a reference to a
                /// frame encoded once per node, so the memory it costs grows with bursts,
                /// not with subscribers. Drops are counted (`shard_queue_full`) and logged.
                inbox_capacity: usize = 65_536;

                /// How long the HTTP upgrade request may take to arrive.
                ///
                /// Bounds what idle or trickling sockets (slowloris) hold before anything
                /// about them is known; long enough for a slow network's first round trip.
                handshake_timeout: ::std::time::Duration = Duration::from_secs(10);

                /// Client events allowed per `rate_limit_window` on one connection.
                ///
                /// Over the rate, events are refused with `rate_limited` (and
                /// `retry_after_ms`); a client that keeps sending is closed 4008.
                rate_limit_events: u32 = 120;

                /// The window of `rate_limit_events`.
                rate_limit_window: ::std::time::Duration = Duration::from_secs(60);

                /// Events a connection may send at once before the rate applies.
                ///
                /// Room for a client's start-up burst (identify, subscribes) and for
                /// human typing patterns, without raising the average rate.
                rate_limit_burst: u32 = 20;

                /// Connections the node holds at most, all shards together; 0: no limit.
                ///
                /// More get 503 with `Retry-After`, before any upgrade work. Without it the
                /// limit is the process's file descriptors.
                max_connections: usize = 0;

                /// Connection attempts per second one IP address may make; 0: no limit.
                ///
                /// More get 429 with `Retry-After`. Slows a reconnect storm from one
                /// address; mind NATs, where one address holds many users.
                ip_connect_rate: u32 = 0;

                /// Attempts one IP address may make at once before `ip_connect_rate` applies.
                ///
                /// 0: the rate itself.
                ip_connect_burst: u32 = 0;

                /// `rpc` calls one connection may have waiting for the backend; more are refused `limit`.
                ///
                /// Bounds what one client can make the backend (and the gateway, which
                /// holds each call and its answer) work on at once; a client awaiting a
                /// few calls in parallel fits.
                rpc_max_in_flight: usize = 16;

                /// Connections one user may hold at once; 0: no limit.
                ///
                /// More get 429 at upgrade, or close 4011 after `identify`. A user's tabs
                /// and devices fit; a leaked token or a reconnect loop cannot hold more.
                max_connections_per_user: usize = 10;

                /// Topics that keep history, as `PREFIX=SIZE/TTL,…` (e.g. `channel:=200/24h`); empty: none.
                ///
                /// Each such topic keeps its last SIZE publications, none older than
                /// TTL, with an epoch and increasing offsets, so that a client that
                /// reconnects recovers what it missed (`subscribe` with `since`) and
                /// `history` shows recent messages. The longest matching prefix
                /// decides. With Redis, every node must be given the same rules.
                history: ::coregate_shards::history::HistoryPolicy =
                    ::coregate_shards::history::HistoryPolicy::default();
            }
            fixed {
                /// Refused events in a row after which a flooding connection is closed 4008.
                ///
                /// Not settable, deliberately: it does not trade one resource for
                /// another, it only tells a client that ignores `rate_limited` (and its
                /// `retry_after_ms`) from one that had a few messages in flight, and
                /// PROTOCOL.md's "`rate_limited`, then 4008" should mean the same on
                /// every deployment. How fast clients may send is `rate_limit_*`.
                flood_close_after: u32 = 20;
            }
        }
    };
}

/// Builds [`ShardConfig`] and its `Default` from [`shard_settings!`].
macro_rules! define_shard_config {
    (
        shard { $( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr ; )* }
        fixed { $( $(#[doc = $fdoc:literal])* $fname:ident : $fty:ty = $fdefault:expr ; )* }
    ) => {
        /// What a shard needs to know to serve connections. Defaults are PROTOCOL.md's.
        ///
        /// Declared in [`shard_settings!`](crate::shard_settings); the binary sets
        /// every field but the last ones, which are fixed on purpose.
        #[derive(Clone, Debug)]
        pub struct ShardConfig {
            $(
                $(#[doc = $doc])*
                #[doc = ""]
                #[doc = concat!("Default: `", stringify!($default), "`.")]
                pub $name: $ty,
            )*
            $(
                $(#[doc = $fdoc])*
                #[doc = ""]
                #[doc = concat!("Default: `", stringify!($fdefault), "`.")]
                pub $fname: $fty,
            )*
        }

        impl Default for ShardConfig {
            fn default() -> Self {
                ShardConfig {
                    $( $name: $default, )*
                    $( $fname: $fdefault, )*
                }
            }
        }
    };
}

shard_settings!(define_shard_config! {});

/// A shard setting that cannot be used; `name` is the setting's, as the file, the
/// environment (`COREGATE_<NAME>`) and the flags spell it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{name}`: {reason}")]
pub struct ShardConfigError {
    pub name: &'static str,
    pub reason: String,
}

fn invalid(name: &'static str, reason: impl Into<String>) -> ShardConfigError {
    ShardConfigError {
        name,
        reason: reason.into(),
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

    /// Refuses settings a shard cannot serve with, naming the first one.
    pub fn validate(&self) -> Result<(), ShardConfigError> {
        if !self.path.starts_with('/') {
            return Err(invalid("path", "must start with `/`"));
        }
        let positive = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("identify_timeout", self.identify_timeout),
            ("slow_client_grace", self.slow_client_grace),
            ("handshake_timeout", self.handshake_timeout),
            ("rate_limit_window", self.rate_limit_window),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(invalid(name, "must be more than zero"));
            }
        }
        if self.max_subscriptions < 2 {
            return Err(invalid(
                "max_subscriptions",
                "must be at least 2 (the automatic topics)",
            ));
        }
        if self.max_message_size < 256 {
            return Err(invalid("max_message_size", "must be at least 256 bytes"));
        }
        if self.batch_delay > Duration::from_secs(1) {
            return Err(invalid("batch_delay", "must be at most 1s"));
        }
        if self.max_frame_size < 1024 {
            return Err(invalid("max_frame_size", "must be at least 1024 bytes"));
        }
        if self.outbound_budget < self.max_frame_size {
            return Err(invalid(
                "outbound_budget",
                "must be at least max_frame_size",
            ));
        }
        if self.control_budget < 4096 {
            return Err(invalid("control_budget", "must be at least 4096 bytes"));
        }
        // A zero-capacity channel only hands over to a receiver waiting at that
        // instant: every try_send from the ingestor would fail.
        if self.inbox_capacity == 0 {
            return Err(invalid("inbox_capacity", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_protocol_md() {
        let config = ShardConfig::default();
        config.validate().expect("defaults are valid");
        assert_eq!(config.path, "/ws");
        assert_eq!(config.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(config.outbound_budget, 1024 * 1024);
        assert_eq!(config.flood_close_after, 20);
        assert_eq!(config.sweep_interval(), Duration::from_secs(1));
    }

    #[test]
    fn bad_settings_name_themselves() {
        let check = |edit: fn(&mut ShardConfig)| {
            let mut config = ShardConfig::default();
            edit(&mut config);
            config.validate().expect_err("invalid").name
        };
        assert_eq!(check(|c| c.path = "ws".into()), "path");
        assert_eq!(
            check(|c| c.handshake_timeout = Duration::ZERO),
            "handshake_timeout"
        );
        assert_eq!(check(|c| c.max_subscriptions = 1), "max_subscriptions");
        assert_eq!(
            check(|c| c.batch_delay = Duration::from_secs(2)),
            "batch_delay"
        );
        assert_eq!(check(|c| c.outbound_budget = 1024), "outbound_budget");
        assert_eq!(check(|c| c.inbox_capacity = 0), "inbox_capacity");
    }
}
