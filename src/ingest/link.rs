//! The ingestor's Redis side (PROTOCOL.md §6): one subscriber connection and one
//! publisher connection, kept up with capped, jittered exponential backoff.
//!
//! One loop owns the routing table and the subscriber connection. It takes, in turn:
//! shard commands (interest changes, which become batched SUBSCRIBE/UNSUBSCRIBE, and
//! publications, which go to the publisher task), messages from Redis (decoded once, in
//! the encodings in use, then routed), reconnection deadlines and health pings. While
//! Redis is down the loop keeps taking commands, so shards never block on it and local
//! interest stays exact; on reconnection every topic of interest is subscribed again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coregate_protocol::{Publication, Topic};
use coregate_shards::{IngestorCommand, MembershipCheck};
use futures_util::{FutureExt, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Client, RedisError};
use tokio::sync::{mpsc, watch, Notify};

use super::backoff::Backoff;
use super::log_limit::LogLimit;
use super::router::Router;
use super::subscriptions::{RedisSubscriptions, MAX_TOPICS_PER_COMMAND};
use super::{IngestorStats, RedisSettings};
use crate::allocator::{release_free_memory, ReleaseAfterWork};

/// First reconnection delay.
const BACKOFF_BASE: Duration = Duration::from_millis(50);
/// Longest reconnection delay while an outage is young: Redis coming back is noticed
/// within a quarter second, whatever the phase of the backoff (issue 18: with only the
/// 1 s cap, a restart just after a refused attempt waited up to a second for the next).
/// A refused attempt costs Redis nothing; 4 to 8 a second per node is cheap.
const BACKOFF_YOUNG_CAP: Duration = Duration::from_millis(250);
/// How long an outage counts as young: restarts and failovers are over well within it.
const BACKOFF_YOUNG_FOR: Duration = Duration::from_secs(10);
/// Longest reconnection delay past that: still within PROTOCOL's recovery target of
/// 2 s once Redis is back, and a long outage is not hammered.
const BACKOFF_CAP: Duration = Duration::from_secs(1);
/// How often an idle subscriber connection is checked with PING.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// Publications waiting for the publisher task; past this they are dropped, counted.
const PUBLISH_QUEUE: usize = 65_536;
/// Commands or messages handled in one go before the loop looks at the other sources.
const DRAIN_BATCH: usize = 1024;

/// The subscriber connection, split so that (un)subscribing does not stop receiving.
struct Subscriber {
    sink: PubSubSink,
    messages: PubSubStream,
}

/// What woke the loop.
enum Event {
    Command(Option<IngestorCommand>),
    Message(Option<redis::Msg>),
    Retry,
    HealthCheck,
    PublisherBroken,
    /// A second after a burst of work began: the thread's free pages go back.
    ReleaseMemory,
}

/// See the module docs. Returns once every command sender is gone.
pub async fn run(
    commands: flume::Receiver<IngestorCommand>,
    router: Router,
    settings: RedisSettings,
    membership: Option<flume::Receiver<MembershipCheck>>,
) {
    let client = match Client::open(settings.url.as_str()) {
        Ok(client) => client,
        Err(error) => {
            // The URL was validated at start-up; this is unreachable in practice.
            tracing::error!(%error, "invalid Redis URL: the node cannot reach Redis");
            return;
        }
    };
    let stats = router_stats(&router);
    let (publisher_conn, publisher_watch) = watch::channel(None);
    let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
    let broken = Arc::new(Notify::new());
    tokio::spawn(super::publisher::run(
        publish_rx,
        publisher_watch.clone(),
        settings.prefix.clone(),
        settings.history.clone(),
        stats.clone(),
        broken.clone(),
    ));
    // This process's id in Redis (typing's owner field, presence's lease): new at each
    // start, so that a restarted node never inherits, nor resurrects, its old state.
    let node_id = format!("{:016x}", fastrand::u64(..));
    let (typing_tx, typing_rx) = mpsc::channel(PUBLISH_QUEUE);
    tokio::spawn(super::typing_redis::run(
        typing_rx,
        publisher_watch.clone(),
        super::typing_redis::TypingRedis {
            prefix: settings.prefix.clone(),
            ttl: settings.typing_ttl,
            node_id: node_id.clone(),
        },
        stats.clone(),
    ));
    let presence_tx = settings.presence.then(|| {
        let (presence_tx, presence_rx) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(super::presence_redis::run(
            presence_rx,
            publisher_watch.clone(),
            super::presence_redis::PresenceRedis {
                prefix: settings.prefix.clone(),
                grace: settings.presence_grace,
                ttl: settings.presence_ttl,
                node_id: node_id.clone(),
            },
            router.shards().to_vec(),
            stats.clone(),
        ));
        presence_tx
    });
    if let Some(checks) = membership {
        tokio::spawn(super::membership::run(
            checks,
            publisher_watch,
            settings.members_prefix.clone(),
            stats.clone(),
        ));
    }
    let mut node = Node {
        client,
        settings,
        router,
        stats,
        subscriptions: RedisSubscriptions::default(),
        subscriber: None,
        publisher_conn,
        publish_tx,
        typing_tx,
        presence_tx,
        backoff: Backoff::new(BACKOFF_BASE, BACKOFF_CAP)
            .young(BACKOFF_YOUNG_CAP, BACKOFF_YOUNG_FOR),
        retry_at: tokio::time::Instant::now(),
        ever_connected: false,
        connect_warnings: LogLimit::per_second(),
        payload_warnings: LogLimit::per_second(),
        publish_warnings: LogLimit::per_second(),
        history_reads: Vec::new(),
        history_library: Arc::from(""),
    };
    node.history_library =
        super::history_redis::library(&node.settings.prefix, &node.settings.history).into();
    let mut health = tokio::time::interval(HEALTH_INTERVAL);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut release = ReleaseAfterWork::default();
    loop {
        if node.subscriber.is_none() && tokio::time::Instant::now() >= node.retry_at {
            node.connect().await;
        }
        let connected = node.subscriber.is_some();
        let event = tokio::select! {
            command = commands.recv_async() => Event::Command(command.ok()),
            message = next_message(node.subscriber.as_mut()) => Event::Message(message),
            _ = tokio::time::sleep_until(node.retry_at), if !connected => Event::Retry,
            _ = health.tick(), if connected => Event::HealthCheck,
            _ = broken.notified() => Event::PublisherBroken,
            _ = sleep_until_due(release.poll_timeout()) => Event::ReleaseMemory,
        };
        if release.handle_timeout(Instant::now()) {
            release_free_memory();
        }
        match event {
            Event::Command(None) => return,
            Event::Command(Some(command)) => {
                release.worked(Instant::now());
                node.handle(command);
                for command in commands.try_iter().take(DRAIN_BATCH) {
                    node.handle(command);
                }
                node.sync_subscriptions().await;
                node.read_history();
            }
            Event::Message(None) => node.lost("the subscriber connection closed"),
            Event::Message(Some(message)) => {
                release.worked(Instant::now());
                node.receive(&message);
                for _ in 0..DRAIN_BATCH {
                    let Some(subscriber) = node.subscriber.as_mut() else {
                        break;
                    };
                    match subscriber.messages.next().now_or_never() {
                        Some(Some(message)) => node.receive(&message),
                        Some(None) => node.lost("the subscriber connection closed"),
                        None => break,
                    }
                }
            }
            Event::Retry | Event::ReleaseMemory => {}
            Event::HealthCheck => node.health_check().await,
            Event::PublisherBroken => node.lost("the publisher connection failed"),
        }
    }
}

fn router_stats(router: &Router) -> Arc<IngestorStats> {
    router.stats().clone()
}

/// Sleeps until `due`, or for ever when nothing is due.
async fn sleep_until_due(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

/// The next message, or never while disconnected.
async fn next_message(subscriber: Option<&mut Subscriber>) -> Option<redis::Msg> {
    match subscriber {
        Some(subscriber) => subscriber.messages.next().await,
        None => std::future::pending().await,
    }
}

/// The loop's state; see the module docs.
struct Node {
    client: Client,
    settings: RedisSettings,
    router: Router,
    stats: Arc<IngestorStats>,
    subscriptions: RedisSubscriptions,
    subscriber: Option<Subscriber>,
    /// The publisher connection, shared with the publisher and membership tasks.
    publisher_conn: watch::Sender<Option<MultiplexedConnection>>,
    publish_tx: mpsc::Sender<Publication>,
    /// Typing signals for the typing task ([`super::typing_redis`]).
    typing_tx: mpsc::Sender<coregate_shards::TypingSignal>,
    /// Presence signals for the presence task ([`super::presence_redis`]); `None`
    /// where presence is off (`--presence false`).
    presence_tx: Option<mpsc::Sender<coregate_shards::PresenceSignal>>,
    backoff: Backoff,
    retry_at: tokio::time::Instant,
    ever_connected: bool,
    connect_warnings: LogLimit,
    payload_warnings: LogLimit,
    publish_warnings: LogLimit,
    /// The shards' reads of history streams, made after the next SUBSCRIBEs.
    history_reads: Vec<coregate_shards::history::HistoryRequest>,
    /// The `coregate` Redis Function library for this node's prefix and rules.
    history_library: Arc<str>,
}

impl Node {
    fn handle(&mut self, command: IngestorCommand) {
        match command {
            IngestorCommand::Interest {
                shard_id,
                topic,
                encoding,
                change,
            } => {
                if let Some((topic, _)) = self
                    .router
                    .change_interest(shard_id, topic, encoding, change)
                {
                    self.subscriptions.mark(topic);
                }
            }
            // Delivered when it comes back from Redis, on this node as on every other.
            IngestorCommand::Publish(publication) => {
                if self.publish_tx.try_send(publication).is_err() {
                    self.stats
                        .redis_publish_errors
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = self.publish_warnings.allow(Instant::now()) {
                        tracing::warn!(
                            suppressed,
                            "publication dropped: the publish queue is full"
                        );
                    }
                }
            }
            IngestorCommand::Typing(signal) => {
                if self.typing_tx.try_send(signal).is_err() {
                    self.stats
                        .redis_publish_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            IngestorCommand::History(request) => self.history_reads.push(request),
            IngestorCommand::Presence(signal) => {
                let Some(presence_tx) = &self.presence_tx else {
                    super::refuse_presence(
                        &self.router,
                        signal,
                        coregate_shards::PresenceAnswer::Disabled,
                    );
                    return;
                };
                if let Err(error) = presence_tx.try_send(signal) {
                    self.stats
                        .redis_publish_errors
                        .fetch_add(1, Ordering::Relaxed);
                    // A query still gets its answer: `error`.
                    super::refuse_presence(
                        &self.router,
                        error.into_inner(),
                        coregate_shards::PresenceAnswer::NotReady,
                    );
                }
            }
        }
    }

    /// Opens both connections and subscribes every topic of interest again; on failure,
    /// schedules the next attempt. The node says it is connected (`/ready`, `/publish`)
    /// only once the subscriptions are in place: from then on deliveries flow.
    async fn connect(&mut self) {
        match tokio::time::timeout(self.settings.timeout, self.open()).await {
            Ok(Ok((subscriber, publisher))) => {
                let down_for = self.backoff.outage_age(Instant::now());
                self.backoff.reset();
                self.subscriber = Some(subscriber);
                self.publisher_conn.send_replace(Some(publisher));
                self.subscriptions.reset(self.router.topics());
                self.sync_subscriptions().await;
                if self.subscriber.is_none() {
                    // Lost while subscribing: `lost` scheduled the next attempt.
                    return;
                }
                self.stats.redis_connected.store(true, Ordering::Relaxed);
                let topics = self.subscriptions.len() as u64;
                if self.ever_connected {
                    self.stats
                        .redis_resubscriptions
                        .fetch_add(topics, Ordering::Relaxed);
                    tracing::info!(topics, ?down_for, "Redis reconnected: subscribed again");
                } else {
                    tracing::info!("Redis connected");
                }
                self.ever_connected = true;
            }
            Ok(Err(error)) => self.connect_failed(&error.to_string()),
            Err(_) => self.connect_failed("timed out"),
        }
    }

    /// Answers the history reads queued since the last batch, now that the
    /// subscriptions they follow are in place (see `history_redis`), in a task of its
    /// own: the loop goes on routing live publications meanwhile (the sessions merge
    /// the two by offset, whichever comes first).
    fn read_history(&mut self) {
        if self.history_reads.is_empty() {
            return;
        }
        let requests = std::mem::take(&mut self.history_reads);
        let connection = self.publisher_conn.borrow().clone();
        // Not connected: answered `HistoryUnavailable` at once.
        let connection = connection.filter(|_| self.subscriber.is_some());
        tokio::spawn(super::history_redis::answer(
            requests,
            connection,
            self.settings.timeout,
            self.router.shards().to_vec(),
            self.history_library.clone(),
            self.stats.clone(),
        ));
    }

    /// Loads the history functions into the Redis just connected to (it may be a
    /// fresh one that lost them), and checks its eviction policy.
    async fn prepare_history(&self, publisher: &mut MultiplexedConnection) {
        if let Err(error) = super::history_redis::load(publisher, &self.history_library).await {
            // Redis before 7.0 has no functions: everything but history works.
            tracing::error!(%error, "the history functions could not be loaded into Redis");
        }
        if !self.settings.history.is_empty() {
            super::history_redis::check_eviction_policy(publisher).await;
        }
    }

    async fn open(&self) -> Result<(Subscriber, MultiplexedConnection), RedisError> {
        let (sink, messages) = self.client.get_async_pubsub().await?.split();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.timeout))
            .set_response_timeout(Some(self.settings.timeout));
        let publisher = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut publisher = publisher;
        self.prepare_history(&mut publisher).await;
        Ok((Subscriber { sink, messages }, publisher))
    }

    fn connect_failed(&mut self, error: &str) {
        let now = tokio::time::Instant::now();
        let delay = self.backoff.next_delay(now.into_std(), fastrand::f64());
        self.retry_at = now + delay;
        if let Some(suppressed) = self.connect_warnings.allow(Instant::now()) {
            tracing::warn!(%error, retry_in = ?delay, suppressed, "cannot connect to Redis");
        }
    }

    /// The link is gone: not ready, every subscription to be made again, retry soon.
    fn lost(&mut self, why: &str) {
        if self.subscriber.take().is_none() {
            return;
        }
        self.publisher_conn.send_replace(None);
        // Not an outage if it never said it was connected (lost while resubscribing).
        if self.stats.redis_connected.swap(false, Ordering::Relaxed) {
            self.stats.redis_outages.fetch_add(1, Ordering::Relaxed);
        }
        self.stats
            .redis_subscribed_topics
            .store(0, Ordering::Relaxed);
        self.subscriptions.reset(self.router.topics());
        let now = tokio::time::Instant::now();
        let delay = self.backoff.next_delay(now.into_std(), fastrand::f64());
        self.retry_at = now + delay;
        tracing::warn!(reason = why, retry_in = ?delay, "Redis connection lost");
    }

    /// Sends the SUBSCRIBE/UNSUBSCRIBE commands that local interest calls for.
    async fn sync_subscriptions(&mut self) {
        if self.subscriber.is_none() || !self.subscriptions.has_changes() {
            return;
        }
        let router = &self.router;
        let plan = self.subscriptions.plan(|topic| router.is_wanted(topic));
        let timeout = self.settings.timeout;
        for (subscribe, topics) in [(true, &plan.subscribe), (false, &plan.unsubscribe)] {
            for chunk in topics.chunks(MAX_TOPICS_PER_COMMAND) {
                let Some(subscriber) = self.subscriber.as_mut() else {
                    return;
                };
                let channels = channels(&self.settings.prefix, chunk);
                let sent = if subscribe {
                    tokio::time::timeout(timeout, subscriber.sink.subscribe(channels)).await
                } else {
                    tokio::time::timeout(timeout, subscriber.sink.unsubscribe(channels)).await
                };
                self.stats
                    .redis_subscription_commands
                    .fetch_add(1, Ordering::Relaxed);
                match sent {
                    Ok(Ok(())) if subscribe => self.subscriptions.subscribed(chunk),
                    Ok(Ok(())) => self.subscriptions.unsubscribed(chunk),
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "SUBSCRIBE/UNSUBSCRIBE failed");
                        self.lost("a subscription command failed");
                        return;
                    }
                    Err(_) => {
                        self.lost("a subscription command timed out");
                        return;
                    }
                }
            }
        }
        self.stats
            .redis_subscribed_topics
            .store(self.subscriptions.len() as u64, Ordering::Relaxed);
    }

    /// A PING on the subscriber connection, to find a connection that died silently.
    async fn health_check(&mut self) {
        let Some(subscriber) = self.subscriber.as_mut() else {
            return;
        };
        let ping = subscriber.sink.ping::<redis::Value>();
        match tokio::time::timeout(self.settings.timeout, ping).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => self.lost("PING failed"),
            Err(_) => self.lost("PING timed out"),
        }
    }

    /// Decodes a message from Redis once, in the encodings in use only, and routes it;
    /// what cannot be used is counted and dropped.
    fn receive(&mut self, message: &redis::Msg) {
        let channel = message.get_channel_name().as_bytes();
        let payload = message.get_payload_bytes();
        let max = self.settings.max_payload;
        let routed = self
            .router
            .receive(channel, &self.settings.prefix, payload, max);
        if let Err(error) = routed {
            let counter = if error.is_too_large() {
                &self.stats.oversize_publications
            } else {
                &self.stats.malformed_publications
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.payload_warnings.allow(Instant::now()) {
                // The error names sizes and parse positions, never the payload.
                tracing::warn!(%error, suppressed, "publication from Redis dropped");
            }
        }
    }
}

fn channels(prefix: &str, topics: &[Topic]) -> Vec<String> {
    topics
        .iter()
        .map(|topic| Publication::redis_channel(prefix, topic))
        .collect()
}
