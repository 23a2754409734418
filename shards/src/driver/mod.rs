//! The glommio driver: the only code of the shards that touches sockets, timers, task
//! queues and the real clock. Each shard is a glommio executor pinned to a core with
//! its own `SO_REUSEPORT` listener and these tasks:
//!
//! - the accept loop ([`serve_shard`]), one task per accepted socket for its upgrade
//!   ([`handshake`]), then one per connection ([`connection`]) that moves bytes between
//!   the socket and its session in the [`LocalHub`];
//! - the router, which hands the ingestor's deliveries to the hub;
//! - the sweeper, which gives the hub the time every `sweep_interval`;
//! - the batch ticker (with `batch_delay`) and, on a drain, the drain task;
//! - the parking rounds and the unparker ([`parking`]): connections quiet for a round
//!   give their task up, and get a new one when their socket or session needs it.
//!
//! Nothing here is touched from another thread except through the inbox and the stats.

mod connection;
mod handshake;
mod parking;

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};

use crate::admission::Admission;
use crate::auth::TokenVerifier;
use crate::backend::SharedBackend;
use crate::bus::{shard_inbox, LocalInbox, ShardMessage, ShardSender, MAX_SHARDS};
use crate::config::ShardConfig;
use crate::hub::{LocalHub, NodeLinks};
use crate::session::{CloseReason, CLOSE_FLUSH_LIMIT};
use crate::stats::ShardStats;

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
/// How often the drain closes its next batch of connections.
const DRAIN_STEP: Duration = Duration::from_millis(100);
/// The accept loop steps aside for a turn of the reactor ([`yield_to_reactor`]) after
/// every this many connections. glommio accepts without waiting while the backlog
/// holds connections, and runs each one's upgrade inline (`spawn_local` polls the new
/// task at once), so under a connect flood one poll of the loop would otherwise go on
/// upgrading (~50–100 µs each, more with RS256/ES256 tokens) while the shard's
/// established connections wait for their I/O to be reaped: this bounds it to ~1–2 ms.
/// A reconnect storm is accepted no slower (BENCHMARKS.md, issue 18).
const ACCEPTS_PER_TURN: usize = 16;
/// How long [`yield_to_reactor`] waits: only so long that the timer is still pending
/// when first polled, so that it fires at the reactor's next poll and not before.
const REACTOR_YIELD: Duration = Duration::from_micros(50);

/// Steps out of the executor's current turn until the reactor has been polled again.
///
/// glommio runs its task queues until they are empty (or its preemption timer fires,
/// 100 ms with [`ROUTER_QUEUE_LATENCY`]'s `NotImportant` queues) before it reaps I/O
/// completions and fires timers: a task that wakes itself (`yield_now`) keeps the turn
/// going, and the sockets of every other connection wait meanwhile. A timer is only
/// fired by the reactor, so a task waiting on one lets the turn end.
pub(crate) async fn yield_to_reactor() {
    glommio::timer::sleep(REACTOR_YIELD).await;
}

/// A shard's driver state, shared by its tasks (all on one thread).
pub(crate) struct LocalShard {
    pub(crate) shard_id: usize,
    pub(crate) config: Arc<ShardConfig>,
    pub(crate) verifier: Arc<dyn TokenVerifier>,
    pub(crate) stats: Arc<ShardStats>,
    /// The node-wide connection limits, shared by every shard.
    pub(crate) admission: Arc<Admission>,
    /// The node's backend client, for the connect call made at the upgrade; let go of
    /// when the shard ends, like the hub's handles on the node's threads.
    pub(crate) backend: RefCell<Option<SharedBackend>>,
    /// The connections and routing; borrowed for one synchronous step at a time,
    /// never across an `await`.
    pub(crate) hub: RefCell<LocalHub>,
    pub(crate) read_buf: RefCell<Vec<u8>>,
    /// The idle connections that gave their task up.
    parking: parking::ParkingLot,
    /// See [`ShardPlacement::release_free_memory`].
    release_free_memory: fn(),
    /// The drain's window, once the node drains; wakes the accept loop so it stops
    /// listening and drains.
    drain_window: Cell<Option<Duration>>,
    drain_waker: RefCell<Option<std::task::Waker>>,
}

impl LocalShard {
    fn start_drain(&self, window: Duration) {
        if self.drain_window.get().is_some() {
            return;
        }
        self.drain_window.set(Some(window));
        if let Some(waker) = self.drain_waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Resolves with the drain's window once the node starts draining.
    async fn drain_started(&self) -> Duration {
        poll_fn(|cx| {
            if let Some(window) = self.drain_window.get() {
                return std::task::Poll::Ready(window);
            }
            *self.drain_waker.borrow_mut() = Some(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await
    }
}

/// Moves events from the inbox to connections.
async fn run_router(shard: Rc<LocalShard>, inbox: LocalInbox) {
    route_in_batches(&inbox, &shard.stats, |message, now| {
        match message {
            ShardMessage::Deliver(delivery) => shard.hub.borrow_mut().route(delivery, now),
            ShardMessage::Drain { window } => shard.start_drain(window),
            ShardMessage::PresenceState { conn, r#ref, users } => shard
                .hub
                .borrow_mut()
                .answer_presence_query(conn, r#ref, users, now),
            ShardMessage::RpcResult {
                conn,
                r#ref,
                answer,
            } => shard.hub.borrow_mut().answer_rpc(conn, r#ref, answer, now),
            ShardMessage::History {
                conn,
                ticket,
                answer,
            } => shard
                .hub
                .borrow_mut()
                .answer_history(conn, ticket, answer, now),
            ShardMessage::Voice {
                conn,
                message,
                r#ref,
                left,
            } => shard
                .hub
                .borrow_mut()
                .answer_voice(conn, message, r#ref, left, now),
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

/// Closes every connection with `reconnect` + 1012 in batches spread over `window`,
/// then waits until they are gone, or until the last batch's close had the time to
/// get out: the shard then ends.
async fn drain(shard: &LocalShard, window: Duration) {
    let keys = shard.hub.borrow().keys();
    let steps = (window.as_millis() / DRAIN_STEP.as_millis()).max(1) as usize;
    let per_step = keys.len().div_ceil(steps).max(1);
    tracing::info!(
        shard = shard.shard_id,
        connections = keys.len(),
        ?window,
        "draining"
    );
    for batch in keys.chunks(per_step) {
        let now = Instant::now();
        for key in batch {
            shard.hub.borrow_mut().close(*key, CloseReason::Drain, now);
        }
        glommio::timer::sleep(DRAIN_STEP).await;
    }
    let give_up = Instant::now() + CLOSE_FLUSH_LIMIT + connection::CLOSE_LINGER;
    while shard.hub.borrow().connection_count() > 0 && Instant::now() < give_up {
        glommio::timer::sleep(DRAIN_STEP).await;
    }
}

/// With a `batch_delay`, wakes the connections that hold deferred events once per
/// delay: what arrived in between goes out joined in one frame and one write.
async fn run_batch_ticker(shard: Rc<LocalShard>) {
    let delay = shard.config.batch_delay;
    loop {
        glommio::timer::sleep(delay).await;
        shard.hub.borrow_mut().wake_deferred();
    }
}

/// Gives the hub the time: deadlines are checked for every connection at once on a
/// fixed interval, not with a timer per connection.
async fn run_sweeper(shard: Rc<LocalShard>) {
    let interval = shard.config.sweep_interval();
    loop {
        glommio::timer::sleep(interval).await;
        shard.hub.borrow_mut().handle_timeouts(Instant::now());
    }
}

/// Ends a parking round every [`parking::PARK_ROUND`]: the idle connections look at
/// whether they were quiet through it, and the allocator gives back the pages freed
/// since the last round (the tasks of those that parked, a connect storm's buffers).
async fn run_park_rounds(shard: Rc<LocalShard>) {
    loop {
        glommio::timer::sleep(parking::PARK_ROUND).await;
        shard.parking.end_round();
        (shard.release_free_memory)();
    }
}

/// Starts a task for each connection that is unparked.
async fn run_unparker(shard: Rc<LocalShard>) {
    while let Some(unparked) = shard.parking.next_unparked(&shard.stats).await {
        glommio::spawn_local(connection::resume(shard.clone(), unparked)).detach();
    }
}

/// Where each shard runs.
#[derive(Clone, Debug)]
pub struct ShardPlacement {
    pub nr_shards: usize,
    /// CPUs to pin shards to, round-robin; `None`: shard i on CPU i when there are
    /// enough CPUs, unpinned otherwise.
    pub cpus: Option<Vec<usize>>,
    /// Hands the pages the calling thread's allocator holds free back to the kernel;
    /// each shard calls it at the end of every parking round. The binary picks the
    /// allocator, so it says how: mimalloc gives a freed page back only when its thread
    /// allocates again after a delay, and a shard left quiet after a connect storm
    /// hardly allocates (BENCHMARKS.md, "Idle connections, one shard").
    pub release_free_memory: fn(),
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

impl RunningShards {
    /// Waits until every shard has ended (after a drain, once its connections are
    /// gone). Blocks the calling thread.
    pub fn join(self) {
        for handle in self.handles {
            if let Err(e) = handle.join() {
                tracing::warn!(error = %e, "a shard ended with an error");
            }
        }
    }
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
    links: NodeLinks,
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
            let links = links.clone();
            let admission = admission.clone();
            let release_free_memory = placement.release_free_memory;
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
                    let parking = match parking::ParkingLot::new(shard_id) {
                        Ok(parking) => parking,
                        Err(e) => {
                            let _ = bound_tx.send(Err(format!("parking lot: {e}")));
                            return;
                        }
                    };
                    let _ = bound_tx.send(listener.local_addr().map_err(|e| e.to_string()));
                    let backend = links.backend.clone();
                    let mut hub = LocalHub::new(
                        shard_id,
                        config.clone(),
                        stats.clone(),
                        verifier.clone(),
                        admission.clone(),
                        links,
                    );
                    hub.set_unpark_requests(parking.unpark_requests());
                    let shard = Rc::new(LocalShard {
                        shard_id,
                        config,
                        verifier,
                        stats,
                        admission,
                        backend: RefCell::new(backend),
                        hub: RefCell::new(hub),
                        read_buf: RefCell::new(vec![0; READ_BUF_SIZE]),
                        parking,
                        release_free_memory,
                        drain_window: Cell::new(None),
                        drain_waker: RefCell::new(None),
                    });
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
/// The kernel clamps the backlog to `net.core.somaxconn`. `SO_REUSEADDR` too, as every
/// server sets it: the connections a node closed linger in TIME_WAIT for a minute, and
/// without it they would keep the next start (after a crash, or a drain) off the port.
fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    // SAFETY: `into_raw_fd` hands over the only owner of a listening TCP socket.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Runs a shard until it has drained: accepts connections until the node drains, then
/// closes them and ends, which stops the executor and its other tasks.
async fn serve_shard(shard: Rc<LocalShard>, listener: TcpListener, inbox: LocalInbox) {
    let executor = glommio::executor();
    let router_queue =
        executor.create_task_queue(Shares::default(), ROUTER_QUEUE_LATENCY, "router");
    let _ = glommio::spawn_local_into(run_router(shard.clone(), inbox), router_queue)
        .map(|t| t.detach());
    glommio::spawn_local(run_sweeper(shard.clone())).detach();
    glommio::spawn_local(run_park_rounds(shard.clone())).detach();
    glommio::spawn_local(run_unparker(shard.clone())).detach();
    if !shard.config.batch_delay.is_zero() {
        glommio::spawn_local(run_batch_ticker(shard.clone())).detach();
    }
    let mut accepted_in_a_row = 0;
    let window = loop {
        let accepted = futures_lite::future::or(async { Ok(listener.accept().await) }, async {
            Err(shard.drain_started().await)
        })
        .await;
        match accepted {
            Ok(Ok(stream)) => {
                // glommio runs a new task at once, inside this one: the upgrade, and the
                // connection's first writes and reads, before the next accept.
                glommio::spawn_local(handshake::serve_connection(shard.clone(), stream)).detach();
                accepted_in_a_row += 1;
                if accepted_in_a_row == ACCEPTS_PER_TURN {
                    accepted_in_a_row = 0;
                    yield_to_reactor().await;
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(shard = shard.shard_id, error = %e, "accept failed");
                // Out of descriptors or similar: back off instead of spinning.
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            Err(window) => break window,
        }
    };
    // The listener is dropped first, so the kernel stops routing connections here and
    // a successor process on the same port takes them.
    drop(listener);
    drain(&shard, window).await;
    shard.hub.borrow_mut().shut_down();
    shard.parking.shut_down();
    shard.backend.borrow_mut().take();
    tracing::info!(shard = shard.shard_id, "drained");
}
