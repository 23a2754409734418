//! One shard: a glommio executor pinned to a core, with its own SO_REUSEPORT
//! listener, connections, topic table, inbox router and deadline sweeper. Nothing
//! here is touched from another thread except through the inbox and the stats.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use coregate_protocol::{CloseCode, Encoding, Publication, ServerEnvelope, Topic};
use glommio::net::{TcpListener, TcpStream};
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};
use slab::Slab;

use crate::admission::{Admission, ConnectionSlot, Denied, UserSlot};
use crate::auth::{Identity, TokenVerifier};
use crate::bus::{
    shard_inbox, IngestorCommand, IngestorSender, InterestChange, LocalInbox, ShardMessage,
    ShardSender, SharedDelivery, MAX_SHARDS,
};
use crate::config::ShardConfig;
use crate::conn::{self, ConnDriver, LocalConn};
use crate::outbox::LocalDelivery;
use crate::stats::ShardStats;
use crate::topic_table::ConnKey;
use crate::topic_table::LocalTopicTable;
use crate::upgrade::{self, Refusal, UpgradeRequest};
use crate::ws;

/// Size of the shard's read buffer, shared by all its connections: a read never
/// needs more, and idle connections then hold no read buffer of their own.
const READ_BUF_SIZE: usize = 64 * 1024;
/// Events routed per inbox drain before the shard lets connections write.
pub const ROUTE_BATCH: usize = 256;
/// The latency class of the router's task queue: `NotImportant`, on purpose.
///
/// A `Latency::Matters(d)` queue makes glommio arm a preemption timer of `d` whenever
/// the queue is runnable, and glommio 0.9 parks the executor, runnable tasks and
/// all, when that timer completes after the reactor's poll and before any task queue
/// ran (fixed upstream in glommio/glommio#53, not released). The router is then
/// runnable but asleep, and since its waker was already taken, the ingestor's later
/// pushes wake nothing until an unrelated event does. With `Matters(200µs)`, a shard
/// descheduled for 200 µs at that point (two shards on a busy 2-core host) held
/// ~1,000 events for up to ~200 ms: Redis publish→deliver p99 95–200 ms at 50,000
/// deliveries/s, against 1.2–1.3 ms with this queue (BENCHMARKS.md). `NotImportant`
/// leaves glommio's 100 ms default timer, which would need a 100 ms stall there.
///
/// What `Matters` would buy is a forced wake-up that preempts a busy executor as soon
/// as a delivery arrives; without it the router waits for the running task queue to
/// finish its turn, which is short because every connection task is. A parked shard
/// wakes no slower: the hand-off bench's idle p50 is 15–54 µs, against 25–60 µs with
/// `Matters(200µs)`.
pub const ROUTER_QUEUE_LATENCY: Latency = Latency::NotImportant;
/// glommio's storage I/O memory per executor; coregate does no file I/O.
const IO_MEMORY: usize = 128 * 1024;
/// Pending connections a shard's listener queues before the kernel drops SYNs.
const LISTEN_BACKLOG: i32 = 65_535;
/// `Retry-After` of a node at its maximum of connections: long enough for others to close.
const NODE_FULL_RETRY_AFTER_SECS: u64 = 5;

/// A shard's state, shared by its tasks (all on one thread).
pub struct LocalShard {
    pub shard_id: usize,
    pub config: Arc<ShardConfig>,
    pub verifier: Arc<dyn TokenVerifier>,
    pub stats: Arc<ShardStats>,
    /// The node-wide connection limits, shared by every shard.
    pub(crate) admission: Arc<Admission>,
    conns: RefCell<Slab<Rc<LocalConn>>>,
    topics: RefCell<LocalTopicTable>,
    ingestor: IngestorSender,
    /// Commands the ingestor's queue could not take yet, retried by the sweeper.
    pending_commands: RefCell<VecDeque<IngestorCommand>>,
    pub(crate) read_buf: RefCell<Vec<u8>>,
    pub(crate) decode_buf: RefCell<Vec<u8>>,
    encode_buf: RefCell<Vec<u8>>,
    pub(crate) batch_buf: RefCell<Vec<u8>>,
    /// Connections with membership checks outstanding; see [`PendingChecks`].
    pending_checks: RefCell<HashMap<ConnKey, PendingChecks>>,
    /// Connections holding events deferred by `batch_delay`, woken at the next tick.
    deferred: RefCell<Vec<ConnKey>>,
    /// Set when the node drains; wakes the accept loop so it stops listening.
    draining: Cell<bool>,
    drain_waker: RefCell<Option<std::task::Waker>>,
}

impl LocalShard {
    fn new(
        shard_id: usize,
        config: Arc<ShardConfig>,
        verifier: Arc<dyn TokenVerifier>,
        stats: Arc<ShardStats>,
        admission: Arc<Admission>,
        ingestor: IngestorSender,
    ) -> LocalShard {
        LocalShard {
            shard_id,
            config,
            verifier,
            stats,
            admission,
            conns: RefCell::new(Slab::new()),
            topics: RefCell::new(LocalTopicTable::default()),
            ingestor,
            pending_commands: RefCell::new(VecDeque::new()),
            read_buf: RefCell::new(vec![0; READ_BUF_SIZE]),
            decode_buf: RefCell::new(Vec::new()),
            encode_buf: RefCell::new(Vec::new()),
            batch_buf: RefCell::new(Vec::new()),
            deferred: RefCell::new(Vec::new()),
            pending_checks: RefCell::new(HashMap::new()),
            draining: Cell::new(false),
            drain_waker: RefCell::new(None),
        }
    }

    /// Encodes a server message and frames it.
    pub(crate) fn encode_frame(&self, encoding: Encoding, envelope: &ServerEnvelope<'_>) -> Bytes {
        let mut buf = self.encode_buf.borrow_mut();
        buf.clear();
        coregate_protocol::encode_server(encoding, envelope, &mut buf);
        ws::data_frame(encoding, &buf)
    }

    pub(crate) fn subscribe(&self, conn: &LocalConn, topic: &Topic) {
        let change = self
            .topics
            .borrow_mut()
            .subscribe(topic, conn.key, conn.encoding);
        conn::subscriptions_mut(conn).push(topic.clone());
        self.queue_interest(conn, topic, change);
    }

    pub(crate) fn unsubscribe(&self, conn: &LocalConn, topic: &Topic) {
        let change = self
            .topics
            .borrow_mut()
            .unsubscribe(topic, conn.key, conn.encoding);
        conn::subscriptions_mut(conn).retain(|t| t != topic);
        self.queue_interest(conn, topic, change);
        if let Some(checks) = self.pending_checks.borrow_mut().get_mut(&conn.key) {
            checks.unsubscribed.push(topic.clone());
        }
    }

    /// A subscribe of `conn` now waits for a membership check.
    pub(crate) fn check_started(&self, conn: &LocalConn) {
        self.pending_checks
            .borrow_mut()
            .entry(conn.key)
            .or_default()
            .outstanding += 1;
    }

    /// A check of `conn` was answered: the topics it unsubscribed from while checks were
    /// outstanding, which the answered subscribe must not subscribe again.
    pub(crate) fn check_finished(&self, key: ConnKey) -> Vec<Topic> {
        let mut pending = self.pending_checks.borrow_mut();
        let Some(checks) = pending.get_mut(&key) else {
            return Vec::new();
        };
        checks.outstanding = checks.outstanding.saturating_sub(1);
        if checks.outstanding == 0 {
            pending
                .remove(&key)
                .map(|c| c.unsubscribed)
                .unwrap_or_default()
        } else {
            checks.unsubscribed.clone()
        }
    }

    /// Tells the ingestor when a (topic, encoding) gained its first or lost its last
    /// local subscriber.
    fn queue_interest(&self, conn: &LocalConn, topic: &Topic, change: Option<InterestChange>) {
        if let Some(change) = change {
            self.queue_command(IngestorCommand::Interest {
                shard_id: self.shard_id,
                topic: topic.clone(),
                encoding: conn.encoding,
                change,
            });
        }
    }

    /// Publishes an event born on this shard (typing) to every node.
    pub(crate) fn publish(&self, publication: Publication) {
        self.queue_command(IngestorCommand::Publish(publication));
        self.flush_interest();
    }

    fn queue_command(&self, command: IngestorCommand) {
        self.pending_commands.borrow_mut().push_back(command);
    }

    /// Hands queued commands to the ingestor without blocking; what its queue cannot
    /// take now stays queued, in order, for the sweeper to retry.
    pub(crate) fn flush_interest(&self) {
        let mut pending = self.pending_commands.borrow_mut();
        while let Some(command) = pending.pop_front() {
            match self.ingestor.try_send(command) {
                Ok(()) => {}
                Err(flume::TrySendError::Full(command)) => {
                    pending.push_front(command);
                    ShardStats::add(&self.stats.interest_backlog, 1);
                    break;
                }
                Err(flume::TrySendError::Disconnected(_)) => {
                    pending.clear();
                    break;
                }
            }
        }
    }

    /// Queues a delivery for every local subscriber of its topic.
    fn route(&self, delivery: Arc<SharedDelivery>, now: Instant) {
        let topics = self.topics.borrow();
        let conns = self.conns.borrow();
        let delivery: LocalDelivery = Rc::new(delivery);
        let budget = self.config.outbound_budget;
        let defer = !self.config.batch_delay.is_zero();
        let mut deferred = self.deferred.borrow_mut();
        let mut routed = false;
        for key in topics.subscribers(delivery.topic()) {
            let Some(conn) = conns.get(key) else { continue };
            routed = true;
            if conn.is_closing() {
                continue;
            }
            if let Some(user) = delivery.publication().exclude_user() {
                if conn.user_id_is(user) {
                    continue;
                }
            }
            if conn.enqueue(&delivery, budget, &self.stats, now, defer) && defer {
                deferred.push(key);
            }
        }
        if !routed {
            ShardStats::add(&self.stats.unrouted_events, 1);
        }
    }

    /// Checks every connection's deadlines (see the module docs of `conn`).
    fn sweep(&self, now: Instant) {
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let config = &self.config;
        let silence_limit = config.heartbeat_interval * 2;
        for (_, conn) in self.conns.borrow().iter() {
            if let Some(since) = conn.closing_since() {
                if now.duration_since(since) > conn::close_flush_limit() {
                    conn.abort();
                }
                continue;
            }
            conn.release_idle_buffers();
            let code = match conn.expires_at() {
                None if now.duration_since(conn.connected_at) > config.identify_timeout => {
                    Some(CloseCode::SessionTimedOut)
                }
                Some(exp) if exp <= unix_now => Some(CloseCode::TokenExpired),
                _ if now.duration_since(conn.last_seen()) > silence_limit => {
                    Some(CloseCode::SessionTimedOut)
                }
                _ => conn
                    .over_budget_since()
                    .filter(|since| now.duration_since(*since) > config.slow_client_grace)
                    .map(|_| CloseCode::SlowConsumer),
            };
            if let Some(code) = code {
                conn.request_close(code);
            }
        }
        self.flush_interest();
    }

    fn register(&self, encoding: Encoding) -> Rc<LocalConn> {
        let mut conns = self.conns.borrow_mut();
        let entry = conns.vacant_entry();
        let conn = Rc::new(LocalConn::new(entry.key(), encoding, Instant::now()));
        entry.insert(conn.clone());
        ShardStats::add(&self.stats.connections, 1);
        conn
    }

    fn unregister(&self, conn: &LocalConn) {
        let topics: Vec<Topic> = conn.subscriptions().clone();
        for topic in &topics {
            self.unsubscribe(conn, topic);
        }
        self.flush_interest();
        self.conns.borrow_mut().try_remove(conn.key);
        ShardStats::sub(&self.stats.connections, 1);
    }

    fn start_drain(self: &Rc<Self>, window: Duration) {
        if self.draining.replace(true) {
            return;
        }
        if let Some(waker) = self.drain_waker.borrow_mut().take() {
            waker.wake();
        }
        glommio::spawn_local(drain(self.clone(), window)).detach();
    }

    /// Resolves once the node starts draining.
    async fn drain_started(&self) {
        poll_fn(|cx| {
            if self.draining.get() {
                return std::task::Poll::Ready(());
            }
            *self.drain_waker.borrow_mut() = Some(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await
    }
}

/// Serves one accepted TCP connection's upgrade, then hands the WebSocket session to
/// a task of its own.
///
/// A task's future is allocated once, at the size of its largest state, and lives as
/// long as the task: the handshake (request parsing, timers, the response) ends with
/// this task, so an idle connection keeps only what its session needs.
async fn serve_connection(shard: Rc<LocalShard>, stream: TcpStream) {
    if let Some(upgraded) = upgrade_connection(&shard, stream).await {
        glommio::spawn_local(run_session(shard, upgraded)).detach();
    }
}

/// A connection whose upgrade succeeded: the 101 response has been written.
struct Upgraded {
    stream: TcpStream,
    encoding: coregate_protocol::Encoding,
    /// Its place in the node's maximum, held until the connection ends.
    slot: ConnectionSlot,
    /// Set when the token came with the upgrade; `None` means in-band `identify`.
    identity: Option<(Identity, UserSlot)>,
}

/// Reads and answers the upgrade request; `None` when it was refused or the peer left.
async fn upgrade_connection(shard: &LocalShard, mut stream: TcpStream) -> Option<Upgraded> {
    let _ = stream.set_nodelay(true);
    if let Some(bytes) = shard.config.socket_send_buffer {
        set_send_buffer(&stream, bytes);
    }
    match admit_upgrade(shard, &mut stream).await {
        Ok((request, slot, identity)) => {
            let response = upgrade::accept_response(&request);
            futures_lite::AsyncWriteExt::write_all(&mut stream, &response)
                .await
                .ok()?;
            ShardStats::add(&shard.stats.upgrades_accepted, 1);
            Some(Upgraded {
                stream,
                encoding: request.encoding,
                slot,
                identity,
            })
        }
        Err(Some(refusal)) => {
            ShardStats::add(shard.stats.refusal_counter(&refusal), 1);
            conn::write_and_close(&mut stream, &refusal.response()).await;
            None
        }
        Err(None) => None,
    }
}

/// An upgrade request that passed every check, with the places it holds.
type Admitted = (UpgradeRequest, ConnectionSlot, Option<(Identity, UserSlot)>);

/// Reads the upgrade request within the handshake timeout and checks it: the node's
/// and the address's limits, then the token and its user's limit. `Err(None)`: the
/// peer went away or was too slow, and gets no answer.
async fn admit_upgrade(
    shard: &LocalShard,
    stream: &mut TcpStream,
) -> Result<Admitted, Option<Refusal>> {
    let peer = stream.peer_addr().map_err(|_| None)?;
    let handshake = read_upgrade(stream, &shard.config.path);
    let timeout = async {
        glommio::timer::sleep(shard.config.handshake_timeout).await;
        Err(None)
    };
    let request = futures_lite::future::or(handshake, timeout).await?;
    let slot = shard
        .admission
        .admit(peer.ip(), Instant::now())
        .map_err(|denied| Some(refusal_for(denied)))?;
    let identity = match request.token.as_deref() {
        None => None,
        Some(token) => {
            let identity = shard
                .verifier
                .verify(token)
                .map_err(|e| Some(Refusal::Unauthorized(e.to_string())))?;
            let user_slot = shard
                .admission
                .claim_user(&identity.user_id)
                .map_err(|denied| Some(refusal_for(denied)))?;
            Some((identity, user_slot))
        }
    };
    Ok((request, slot, identity))
}

/// The HTTP answer to an admission refusal.
fn refusal_for(denied: Denied) -> Refusal {
    match denied {
        Denied::NodeFull => Refusal::Unavailable {
            retry_after_secs: NODE_FULL_RETRY_AFTER_SECS,
        },
        Denied::IpRate { retry_after } => Refusal::TooManyRequests {
            retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
        },
        Denied::UserLimit => Refusal::UserLimit,
    }
}

/// The WebSocket session of an upgraded connection, until it closes.
async fn run_session(shard: Rc<LocalShard>, upgraded: Upgraded) {
    let Upgraded {
        stream,
        encoding,
        slot: _held_until_closed,
        identity,
    } = upgraded;
    let (conn, mut driver, authenticated) = start_session(&shard, stream, encoding, identity);
    if authenticated {
        driver.run().await;
    }
    shard.unregister(&conn);
}

/// Registers the connection and greets it; `false` when its upgrade token was refused
/// after all (e.g. a user over its connection limit), and it is already closing.
///
/// Not async on purpose: what it takes apart stays out of the session's future.
fn start_session(
    shard: &Rc<LocalShard>,
    stream: TcpStream,
    encoding: Encoding,
    identity: Option<(Identity, UserSlot)>,
) -> (Rc<LocalConn>, ConnDriver, bool) {
    let conn = shard.register(encoding);
    let mut driver = ConnDriver::new(shard.clone(), conn.clone(), stream);
    driver.reply(
        &coregate_protocol::ServerMessage::Hello {
            session_id: conn.session_id.to_string(),
            heartbeat_interval_ms: shard.config.heartbeat_interval.as_millis() as u64,
        },
        None,
    );
    let authenticated = match identity {
        Some((identity, user_slot)) => matches!(
            driver.become_ready(identity, user_slot),
            conn::Flow::Continue
        ),
        None => true,
    };
    (conn, driver, authenticated)
}

/// Reads the HTTP upgrade request. `Err(None)`: the peer went away.
async fn read_upgrade(
    stream: &mut TcpStream,
    path: &str,
) -> Result<UpgradeRequest, Option<Refusal>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = vec![0u8; 1024];
    loop {
        let n = futures_lite::AsyncReadExt::read(stream, &mut chunk)
            .await
            .map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(request) = upgrade::parse_request(&buf, path).map_err(Some)? {
            return Ok(request);
        }
    }
}

/// Moves events from the inbox to connections.
async fn run_router(shard: Rc<LocalShard>, inbox: LocalInbox) {
    route_in_batches(&inbox, &shard.stats, |message, now| {
        match message {
            ShardMessage::Deliver(delivery) => shard.route(delivery, now),
            ShardMessage::Drain { window } => shard.start_drain(window),
        }
        ControlFlow::Continue(())
    })
    .await;
}

/// The shard's inbox loop: waits for the inbox without spinning, then hands up to
/// [`ROUTE_BATCH`] queued messages to `handle`, with the time the batch started, before
/// yielding, so that connections write what one batch queued before the next is
/// routed. Ends when every sender is gone or `handle` breaks. Public so that the
/// hand-off bench measures this loop, not a copy of it.
pub async fn route_in_batches(
    inbox: &LocalInbox,
    stats: &ShardStats,
    mut handle: impl FnMut(ShardMessage, Instant) -> ControlFlow<()>,
) {
    while let Some(first) = poll_fn(|cx| inbox.poll_recv(cx)).await {
        let now = Instant::now();
        ShardStats::raise(&stats.inbox_high_water_events, inbox.len() as u64 + 1);
        let mut next = Some(first);
        let mut routed = 0;
        while let Some(message) = next {
            if handle(message, now).is_break() {
                return;
            }
            routed += 1;
            next = if routed < ROUTE_BATCH {
                inbox.try_recv()
            } else {
                None
            };
        }
        futures_lite::future::yield_now().await;
    }
}

/// Closes every connection with 1012 in batches spread over `window`.
async fn drain(shard: Rc<LocalShard>, window: Duration) {
    const STEP: Duration = Duration::from_millis(100);
    let keys: Vec<usize> = shard.conns.borrow().iter().map(|(key, _)| key).collect();
    let steps = (window.as_millis() / STEP.as_millis()).max(1) as usize;
    let per_step = keys.len().div_ceil(steps).max(1);
    tracing::info!(
        shard = shard.shard_id,
        connections = keys.len(),
        ?window,
        "draining"
    );
    for batch in keys.chunks(per_step) {
        for key in batch {
            if let Some(conn) = shard.conns.borrow().get(*key) {
                conn.request_close(CloseCode::ServiceRestart);
            }
        }
        glommio::timer::sleep(STEP).await;
    }
}

/// With a `batch_delay`, wakes the connections that hold deferred events once per
/// delay: what arrived in between goes out joined in one frame and one write.
async fn run_batch_ticker(shard: Rc<LocalShard>) {
    let delay = shard.config.batch_delay;
    let mut due = Vec::new();
    loop {
        glommio::timer::sleep(delay).await;
        std::mem::swap(&mut due, &mut *shard.deferred.borrow_mut());
        let conns = shard.conns.borrow();
        for key in due.drain(..) {
            // A key reused by a newer connection only gets a harmless extra wake.
            if let Some(conn) = conns.get(key) {
                conn.wake_writer();
            }
        }
    }
}

async fn run_sweeper(shard: Rc<LocalShard>) {
    let interval = shard.config.sweep_interval();
    loop {
        glommio::timer::sleep(interval).await;
        shard.sweep(Instant::now());
    }
}

/// A connection's subscribes waiting for membership checks. A client may unsubscribe
/// before the answer comes; the late subscribe must then leave that topic alone, or
/// the client would end up subscribed against its last word.
#[derive(Default)]
struct PendingChecks {
    outstanding: u32,
    unsubscribed: Vec<Topic>,
}

/// Where each shard runs.
#[derive(Clone, Debug)]
pub struct ShardPlacement {
    pub nr_shards: usize,
    /// CPUs to pin shards to, round-robin; `None`: shard i on CPU i when there are
    /// enough CPUs, unpinned otherwise.
    pub cpus: Option<Vec<usize>>,
}

impl ShardPlacement {
    fn placement(&self, shard_id: usize) -> Placement {
        match &self.cpus {
            Some(cpus) if !cpus.is_empty() => Placement::Fixed(cpus[shard_id % cpus.len()]),
            _ => {
                let available = std::thread::available_parallelism().map_or(1, |n| n.get());
                if self.nr_shards <= available {
                    Placement::Fixed(shard_id)
                } else {
                    Placement::Unbound
                }
            }
        }
    }
}

/// Everything another thread holds of the running shards.
pub struct RunningShards {
    pub local_addr: SocketAddr,
    pub senders: Vec<ShardSender>,
    pub stats: Vec<Arc<ShardStats>>,
    pub handles: Vec<glommio::ExecutorJoinHandle<()>>,
}

/// Why the shards could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("shard count must be between 1 and {MAX_SHARDS}, not {0}")]
    ShardCount(usize),
    #[error("shard {shard_id} could not start: {message}")]
    Shard { shard_id: usize, message: String },
}

/// Starts `placement.nr_shards` shards listening on `listen`. Shards bind one after
/// the other so that port 0 resolves once and every shard shares the port.
pub fn start_shards(
    listen: SocketAddr,
    placement: &ShardPlacement,
    config: Arc<ShardConfig>,
    verifier: Arc<dyn TokenVerifier>,
    ingestor: IngestorSender,
) -> Result<RunningShards, StartError> {
    let nr_shards = placement.nr_shards;
    if nr_shards == 0 || nr_shards > MAX_SHARDS {
        return Err(StartError::ShardCount(nr_shards));
    }
    let mut addr = listen;
    let admission = Arc::new(Admission::new(&config));
    let mut running = RunningShards {
        local_addr: listen,
        senders: Vec::new(),
        stats: Vec::new(),
        handles: Vec::new(),
    };
    for shard_id in 0..nr_shards {
        let (sender, inbox) = shard_inbox(shard_id, config.inbox_capacity);
        let stats = Arc::new(ShardStats::default());
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let shard_error = |message: String| StartError::Shard { shard_id, message };
        let spawn = {
            let config = config.clone();
            let verifier = verifier.clone();
            let stats = stats.clone();
            let ingestor = ingestor.clone();
            let admission = admission.clone();
            LocalExecutorBuilder::new(placement.placement(shard_id))
                .name(&format!("shard-{shard_id}"))
                .io_memory(IO_MEMORY)
                .spawn(move || async move {
                    let listener = match bind_listener(addr) {
                        Ok(listener) => listener,
                        Err(e) => {
                            let _ = bound_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = bound_tx.send(listener.local_addr().map_err(|e| e.to_string()));
                    let shard = Rc::new(LocalShard::new(
                        shard_id, config, verifier, stats, admission, ingestor,
                    ));
                    serve_shard(shard, listener, inbox).await;
                })
        };
        let handle = spawn.map_err(|e| shard_error(e.to_string()))?;
        let bound = bound_rx
            .recv()
            .map_err(|_| shard_error("it stopped before binding".into()))?
            .map_err(shard_error)?;
        addr = bound;
        running.local_addr = bound;
        running.senders.push(sender);
        running.stats.push(stats);
        running.handles.push(handle);
    }
    Ok(running)
}

/// A shard's `SO_REUSEPORT` listener, with a backlog deep enough for a reconnect
/// storm. glommio's own `bind` listens with a backlog of 1,024: when every client of a
/// node reconnects at once, the overflow's SYNs are dropped and retried by their
/// kernels only after 1, 3, 7 s…, so a storm that should take a second takes many.
/// The kernel clamps the backlog to `net.core.somaxconn`.
fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    // SAFETY: `into_raw_fd` hands over the only owner of a listening TCP socket.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Sets `SO_SNDBUF` (see `ShardConfig::socket_send_buffer`); best effort.
fn set_send_buffer(stream: &TcpStream, bytes: usize) {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the descriptor belongs to `stream`, which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    if let Err(e) = socket2::SockRef::from(&fd).set_send_buffer_size(bytes) {
        tracing::debug!(error = %e, "SO_SNDBUF not set");
    }
}

async fn serve_shard(shard: Rc<LocalShard>, listener: TcpListener, inbox: LocalInbox) {
    let executor = glommio::executor();
    let router_queue =
        executor.create_task_queue(Shares::default(), ROUTER_QUEUE_LATENCY, "router");
    let _ = glommio::spawn_local_into(run_router(shard.clone(), inbox), router_queue)
        .map(|t| t.detach());
    glommio::spawn_local(run_sweeper(shard.clone())).detach();
    if !shard.config.batch_delay.is_zero() {
        glommio::spawn_local(run_batch_ticker(shard.clone())).detach();
    }
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.drain_started().await;
            None
        })
        .await;
        let Some(accepted) = accepted else {
            // Draining: the listener is dropped, so the kernel stops routing here. The
            // shard's other tasks live on until the process exits (returning would
            // stop the executor and drop them).
            drop(listener);
            futures_lite::future::pending::<()>().await;
            return;
        };
        match accepted {
            Ok(stream) => {
                glommio::spawn_local(serve_connection(shard.clone(), stream)).detach();
            }
            Err(e) => {
                tracing::warn!(shard = shard.shard_id, error = %e, "accept failed");
                // Out of descriptors or similar: back off instead of spinning.
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
