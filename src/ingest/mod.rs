//! The node's ingestor: the one place that knows which shards want which topics, and
//! the node's only link to Redis.
//!
//! It runs on its own thread. Without Redis (the embedded default) it is the node's
//! whole bus: a blocking loop that routes what `/publish` and the shards hand it. With
//! Redis it runs a current-thread tokio runtime: one subscriber connection whose
//! subscriptions follow local interest lazily, one publisher connection through which
//! every publication made on this node goes out (and comes back to be delivered, so it
//! is delivered once), and the membership checks of the `redis` authorizer.
//!
//! - [`router`]: topic → shard sets ([`interest`]), and the fan-out to shard queues;
//! - [`subscriptions`]: which topics Redis must be (un)subscribed to, batched;
//! - [`link`]: the Redis side: connections, reconnection, decoding what arrives;
//! - [`publisher`]: PUBLISH, pipelined, in order;
//! - [`membership`]: SISMEMBER checks for the shards' authorizer;
//! - [`presence`]: presence node-wide (connections per user, grace, status, query),
//!   the whole of it without Redis; [`presence_redis`]: the same across nodes, in
//!   Redis, with a lease per node;
//! - [`typing`]: typing indicators node-wide (dedup, rate, TTL), the whole of it
//!   without Redis; [`typing_redis`]: the same across nodes, kept in Redis;
//! - [`backoff`], [`log_limit`]: reconnection delays and rate-limited warnings.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use coregate_shards::{IngestorCommand, MembershipCheck, PresenceAnswer};

use crate::allocator::{release_free_memory, ReleaseAfterWork};

mod backoff;
pub mod history;
pub mod history_redis;
mod interest;
mod link;
mod log_limit;
mod membership;
pub mod presence;
pub mod presence_redis;
mod publisher;
mod router;
mod subscriptions;
pub mod typing;
pub mod typing_redis;

pub use router::Router;

/// Counters of the ingestor, read by the metrics exporter and `/ready`.
#[derive(Debug, Default)]
pub struct IngestorStats {
    pub publications: AtomicU64,
    pub publications_without_subscribers: AtomicU64,
    pub shard_queue_full: AtomicU64,
    pub topics_of_interest: AtomicU64,
    /// Whether both Redis connections are up (always false without Redis).
    pub redis_connected: AtomicBool,
    /// Topics subscribed in Redis now.
    pub redis_subscribed_topics: AtomicU64,
    /// Connections to Redis lost after having been up.
    pub redis_outages: AtomicU64,
    /// Topics subscribed again after a reconnection.
    pub redis_resubscriptions: AtomicU64,
    /// SUBSCRIBE/UNSUBSCRIBE commands sent (each for many topics).
    pub redis_subscription_commands: AtomicU64,
    /// Publications sent to Redis.
    pub redis_published: AtomicU64,
    /// Publications that could not be sent to Redis (down, full queue, error).
    pub redis_publish_errors: AtomicU64,
    /// Payloads from Redis that were not a valid envelope on a valid topic.
    pub malformed_publications: AtomicU64,
    /// Payloads from Redis over the size limit.
    pub oversize_publications: AtomicU64,
    /// Membership checks answered, and those that failed.
    pub membership_checks: AtomicU64,
    pub membership_check_errors: AtomicU64,
    /// The shards' requests for history (a subscribe's topics, a `history` query).
    pub history_requests: AtomicU64,
    /// Reads of a topic's stream in Redis (`coregate_history`), each answering every
    /// request about that topic queued meanwhile.
    pub history_redis_reads: AtomicU64,
    /// Reads that failed (Redis down, timed out).
    pub history_read_errors: AtomicU64,
    /// Publications on a topic with history that came without an offset: published
    /// with a plain `PUBLISH` rather than `FCALL coregate_publish`, so no client can
    /// recover them. Counted where the topic has local subscribers.
    pub history_publications_without_offset: AtomicU64,
}

/// How the node uses Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    /// Channel of a topic: `<prefix><topic>`.
    pub prefix: String,
    /// Larger payloads from Redis are dropped and counted.
    pub max_payload: usize,
    /// Set of a topic's members for the `redis` authorizer: `<members_prefix><topic>`.
    pub members_prefix: String,
    /// How long to wait for connecting and for any one reply.
    pub timeout: Duration,
    /// `--typing-ttl`.
    pub typing_ttl: Duration,
    /// `--presence`: whether presence is tracked at all.
    pub presence: bool,
    /// `--presence-grace`.
    pub presence_grace: Duration,
    /// `--presence-ttl`: each node's lease on its users' presence.
    pub presence_ttl: Duration,
    /// `--history`.
    pub history: coregate_shards::history::HistoryPolicy,
}

/// Runs the ingestor on its own thread until every command sender is gone.
/// `membership` is the receiving side of the `redis` authorizer's checks, if any.
pub fn spawn(
    commands: flume::Receiver<IngestorCommand>,
    mut router: Router,
    redis: Option<RedisSettings>,
    membership: Option<flume::Receiver<MembershipCheck>>,
    typing_ttl: Duration,
    presence_grace: Option<Duration>,
    history: coregate_shards::history::HistoryPolicy,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = match &redis {
        None => None,
        Some(_) => Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        ),
    };
    std::thread::Builder::new()
        .name("ingestor".into())
        .spawn(move || match (runtime, redis) {
            (Some(runtime), Some(settings)) => {
                runtime.block_on(link::run(commands, router, settings, membership));
            }
            _ => run_embedded(&commands, &mut router, typing_ttl, presence_grace, history),
        })
}

/// The wall clock in ms since the epoch (presence's `since`).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Answers a `presence_query` from `table` to the asking connection's shard.
pub(crate) fn answer_presence_query(
    table: &presence::PresenceTable,
    router: &Router,
    signal: coregate_shards::PresenceSignal,
) {
    if let coregate_shards::PresenceSignal::Query {
        shard_id,
        conn,
        r#ref,
        viewer,
        user_ids,
    } = signal
    {
        let users = PresenceAnswer::Users(table.query(&viewer, &user_ids));
        router.answer(
            shard_id,
            coregate_shards::ShardMessage::PresenceState { conn, r#ref, users },
        );
    }
}

/// A presence signal the node cannot act on (presence off, or its queue to Redis full):
/// a `presence_query` is answered `refusal`, any other signal is dropped.
pub(crate) fn refuse_presence(
    router: &Router,
    signal: coregate_shards::PresenceSignal,
    refusal: PresenceAnswer,
) {
    if let coregate_shards::PresenceSignal::Query {
        shard_id,
        conn,
        r#ref,
        ..
    } = signal
    {
        router.answer(
            shard_id,
            coregate_shards::ShardMessage::PresenceState {
                conn,
                r#ref,
                users: refusal,
            },
        );
    }
}

/// The embedded bus: publications are delivered locally as they come, appended first
/// to their topic's stream when it has history ([`history::HistoryStore`], which also
/// answers the shards' reads); typing goes through the node's [`typing::TypingTable`]
/// and presence through its [`presence::PresenceTable`], whose deadlines this loop's
/// timer drives. Everything happens on this one thread, in order, so a read and the
/// publications around it never race.
fn run_embedded(
    commands: &flume::Receiver<IngestorCommand>,
    router: &mut Router,
    typing_ttl: Duration,
    presence_grace: Option<Duration>,
    history: coregate_shards::history::HistoryPolicy,
) {
    let mut typing = typing::TypingTable::new(typing_ttl);
    // `None`: presence is off on this node.
    let mut presence = presence_grace.map(presence::PresenceTable::new);
    let mut streams = history::HistoryStore::new(history);
    let mut next_sweep = Instant::now() + history::SWEEP_INTERVAL;
    let mut release = ReleaseAfterWork::default();
    let mut handle = |command,
                      typing: &mut typing::TypingTable,
                      presence: &mut Option<presence::PresenceTable>,
                      streams: &mut history::HistoryStore| {
        let router = &mut *router;
        let mut deliver =
            |publication| router.deliver_shared(streams.append(publication, Instant::now()));
        match command {
            IngestorCommand::Interest {
                shard_id,
                topic,
                encoding,
                change,
            } => {
                router.change_interest(shard_id, topic, encoding, change);
            }
            IngestorCommand::Publish(publication) => deliver(publication),
            IngestorCommand::Typing(signal) => {
                if let Some(announcement) = typing.handle(signal, Instant::now()) {
                    deliver(announcement);
                }
            }
            IngestorCommand::Presence(signal) => match presence {
                None => refuse_presence(router, signal, PresenceAnswer::Disabled),
                Some(table) if matches!(signal, coregate_shards::PresenceSignal::Query { .. }) => {
                    answer_presence_query(table, router, signal);
                }
                Some(table) => {
                    for announcement in table.handle(signal, Instant::now(), unix_ms()) {
                        deliver(announcement);
                    }
                }
            },
            IngestorCommand::History(request) => {
                router
                    .stats()
                    .history_requests
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (shard_id, answer) = streams.answer(request, Instant::now());
                router.answer(shard_id, answer);
            }
        }
    };
    loop {
        let presence_deadline = presence.as_ref().and_then(|p| p.poll_timeout());
        let deadline = [
            typing.poll_timeout(),
            presence_deadline,
            Some(next_sweep),
            release.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let next = match deadline {
            Some(deadline) => match commands.recv_deadline(deadline) {
                Ok(command) => Some(command),
                Err(flume::RecvTimeoutError::Timeout) => None,
                Err(flume::RecvTimeoutError::Disconnected) => return,
            },
            None => match commands.recv() {
                Ok(command) => Some(command),
                Err(_) => return,
            },
        };
        if let Some(command) = next {
            handle(command, &mut typing, &mut presence, &mut streams);
            // Drain what is already queued before blocking again.
            while let Ok(command) = commands.try_recv() {
                handle(command, &mut typing, &mut presence, &mut streams);
            }
            release.worked(Instant::now());
        }
        if release.handle_timeout(Instant::now()) {
            release_free_memory();
        }
        for stop in typing.handle_timeout(Instant::now()) {
            handle(
                IngestorCommand::Publish(stop),
                &mut typing,
                &mut presence,
                &mut streams,
            );
        }
        let offlines = match &mut presence {
            Some(table) => table.handle_timeout(Instant::now(), unix_ms()),
            None => Vec::new(),
        };
        if Instant::now() >= next_sweep {
            streams.sweep(Instant::now());
            next_sweep = Instant::now() + history::SWEEP_INTERVAL;
        }
        for offline in offlines {
            handle(
                IngestorCommand::Publish(offline),
                &mut typing,
                &mut presence,
                &mut streams,
            );
        }
    }
}
