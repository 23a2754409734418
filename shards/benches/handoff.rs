//! Ingestor → shard hand-off latency (issue #5: p99 ≤ 50 µs).
//!
//! Uses the real plumbing: [`shard_inbox`], [`ShardSender::try_send`] on a plain std thread
//! (as the ingestor does) and [`LocalInbox::poll_recv`] inside a glommio `LocalExecutor`
//! built like a shard's (same `io_memory`, router on a task queue of the shard's
//! [`ROUTER_QUEUE_LATENCY`], a sweeper timer and an accept loop beside it so that the
//! executor parks the way a real shard does). Latency is `Instant::now()` at the router
//! minus the `received_at` the sender stamped just before `try_send`.
//!
//! Scenarios:
//! - `idle`: one event, then the sender sleeps 200 µs–1 ms, so the shard has parked
//!   (blocked in io_uring) before every event and each one pays a cross-thread wake-up;
//! - `burst`: 64 events back to back, then a 500 µs pause: the first event of a burst
//!   wakes the shard, the rest find it awake;
//! - `stream`: events as fast as the sender can push them (retrying on a full queue):
//!   throughput, and latency including queueing.
//!
//! Run: `cargo bench -p coregate-shards --bench handoff`. Knobs (environment):
//! `HANDOFF_SPIN_US` sets `LocalExecutorBuilder::spin_before_park` on the bench shard
//! (default: unset, as in `start_shards`), `HANDOFF_LATENCY_US` a `Latency::Matters` for
//! the router queue instead of the shard's (unset or 0: the shard's), `HANDOFF_CPU` the CPU
//! the shard is pinned to (default: the last one; the sender is left unpinned, like the
//! ingestor), `HANDOFF_IDLE_EVENTS` the number of events of the idle scenario (default 5,000).

#![allow(clippy::unwrap_used)]

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coregate_protocol::{Publication, Topic};
use coregate_shards::bus::{shard_inbox, ShardMessage, ShardSender, SharedDelivery};
use coregate_shards::driver::{route_in_batches, ROUTER_QUEUE_LATENCY};
use coregate_shards::ShardStats;
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};
use hdrhistogram::Histogram;

/// Same as the shard's (`shard.rs`): coregate does no file I/O.
const IO_MEMORY: usize = 128 * 1024;
/// The gateway's default inbox capacity (`ShardConfig::inbox_capacity`).
const INBOX_CAPACITY: usize = 65_536;

/// What the receiver measured.
struct Received {
    latency_ns: Histogram<u64>,
    count: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Starts a bench shard that drains `inbox` until it receives a `Drain`.
fn spawn_shard(
    inbox: coregate_shards::bus::LocalInbox,
    cpu: usize,
    spin: Option<Duration>,
    latency: Latency,
) -> glommio::ExecutorJoinHandle<Received> {
    let mut builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .name("bench-shard")
        .io_memory(IO_MEMORY);
    if let Some(spin) = spin {
        builder = builder.spin_before_park(spin);
    }
    builder
        .spawn(move || async move {
            let executor = glommio::executor();
            let router_queue = executor.create_task_queue(Shares::default(), latency, "router");
            // A shard also has a sweeper timer and a pending accept: keep both so the
            // executor parks with the same registrations as a real one.
            glommio::spawn_local(async {
                loop {
                    glommio::timer::sleep(Duration::from_millis(250)).await;
                }
            })
            .detach();
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            glommio::spawn_local(async move {
                while let Ok(stream) = listener.accept().await {
                    drop(stream);
                }
            })
            .detach();
            let router = glommio::spawn_local_into(
                async move {
                    let mut received = Received {
                        latency_ns: Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap(),
                        count: 0,
                        first: None,
                        last: None,
                    };
                    // The shard's own router loop, recording instead of routing. Each
                    // event is timed when it is handled, not at its batch's start.
                    let stats = ShardStats::default();
                    route_in_batches(&inbox, &stats, |message, _| match message {
                        ShardMessage::Deliver(delivery) => {
                            let now = Instant::now();
                            let ns = now.duration_since(delivery.received_at).as_nanos();
                            received.latency_ns.saturating_record(ns as u64);
                            received.count += 1;
                            received.first.get_or_insert(now);
                            received.last = Some(now);
                            ControlFlow::Continue(())
                        }
                        // The end of a run (see `run`).
                        ShardMessage::Drain { .. } => ControlFlow::Break(()),
                        // Answers to connections' requests: never sent here.
                        _ => ControlFlow::Continue(()),
                    })
                    .await;
                    received
                },
                router_queue,
            )
            .unwrap();
            router.await
        })
        .unwrap()
}

/// A ~100-byte publication like the load harness sends.
fn publication() -> Publication {
    let topic = Topic::parse("channel:bench").unwrap();
    Publication::new(
        topic,
        "message_new",
        serde_json::json!({"id": 1, "body": "x".repeat(64)}),
        None,
    )
}

/// Sends one delivery stamped now; spins while the queue is full.
fn send(sender: &ShardSender, template: &Publication) -> u64 {
    let mut full = 0;
    loop {
        let delivery = Arc::new(SharedDelivery::new(template.clone(), Instant::now()));
        match sender.try_send(ShardMessage::Deliver(delivery)) {
            Ok(()) => return full,
            Err(coregate_shards::HandOffError::Full { .. }) => {
                full += 1;
                std::hint::spin_loop();
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// A small xorshift: the pauses only need to be spread, not random.
struct Gaps(u64);
impl Gaps {
    fn next(&mut self, lo_us: u64, hi_us: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_micros(lo_us + self.0 % (hi_us - lo_us + 1))
    }
}

enum Pattern {
    Idle {
        events: u64,
    },
    Burst {
        bursts: u64,
        size: u64,
        pause: Duration,
    },
    Stream {
        events: u64,
    },
}

struct Outcome {
    name: &'static str,
    received: Received,
    full: u64,
}

fn run(
    name: &'static str,
    pattern: Pattern,
    cpu: usize,
    spin: Option<Duration>,
    latency: Latency,
) -> Outcome {
    let (sender, inbox) = shard_inbox(0, INBOX_CAPACITY);
    let shard = spawn_shard(inbox, cpu, spin, latency);
    // Let the executor start and park before the first event.
    std::thread::sleep(Duration::from_millis(50));
    let template = publication();
    let mut gaps = Gaps(0x9e37_79b9_7f4a_7c15);
    let mut full = 0;
    match pattern {
        Pattern::Idle { events } => {
            for _ in 0..events {
                full += send(&sender, &template);
                std::thread::sleep(gaps.next(200, 1000));
            }
        }
        Pattern::Burst {
            bursts,
            size,
            pause,
        } => {
            for _ in 0..bursts {
                for _ in 0..size {
                    full += send(&sender, &template);
                }
                std::thread::sleep(pause);
            }
        }
        Pattern::Stream { events } => {
            for _ in 0..events {
                full += send(&sender, &template);
            }
        }
    }
    // Dropping the sender does not wake a parked router (`poll_recv` sees the
    // disconnection only at its next wake-up), so the end is a message.
    while let Err(e) = sender.try_send(ShardMessage::Drain {
        window: Duration::ZERO,
    }) {
        assert!(
            matches!(e, coregate_shards::HandOffError::Full { .. }),
            "{e}"
        );
        std::hint::spin_loop();
    }
    let received = shard.join().unwrap();
    Outcome {
        name,
        received,
        full,
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn print(outcome: &Outcome) {
    let h = &outcome.received.latency_ns;
    let rate = match (outcome.received.first, outcome.received.last) {
        (Some(first), Some(last)) if last > first => {
            format!(
                "{:.0}",
                outcome.received.count as f64 / last.duration_since(first).as_secs_f64()
            )
        }
        _ => "-".into(),
    };
    println!(
        "| {:<7} | {:>9} | {:>7.1} | {:>7.1} | {:>7.1} | {:>8.1} | {:>9.1} | {:>11} | {:>6} |",
        outcome.name,
        outcome.received.count,
        us(h.value_at_quantile(0.50)),
        us(h.value_at_quantile(0.90)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max()),
        rate,
        outcome.full,
    );
}

fn main() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = env_u64("HANDOFF_CPU").map_or(cpus - 1, |c| c as usize);
    let spin = env_u64("HANDOFF_SPIN_US").map(Duration::from_micros);
    // The router's task queue: the shard's, or `Matters(HANDOFF_LATENCY_US)` to compare.
    let latency = match env_u64("HANDOFF_LATENCY_US").unwrap_or(0) {
        0 => ROUTER_QUEUE_LATENCY,
        us => Latency::Matters(Duration::from_micros(us)),
    };
    let idle_events = env_u64("HANDOFF_IDLE_EVENTS").unwrap_or(5_000);
    println!(
        "hand-off bench: shard pinned to CPU {cpu} of {cpus}, sender unpinned, \
         spin_before_park {spin:?}, router {latency:?}, inbox capacity {INBOX_CAPACITY}"
    );
    println!(
        "| pattern | events    | p50 µs  | p90 µs  | p99 µs  | p99.9 µs | max µs    | events/s    | full   |"
    );
    println!(
        "|---------|-----------|---------|---------|---------|----------|-----------|-------------|--------|"
    );
    let outcomes = [
        (
            "idle",
            Pattern::Idle {
                events: idle_events,
            },
        ),
        (
            "burst",
            Pattern::Burst {
                bursts: 500,
                size: 64,
                pause: Duration::from_micros(500),
            },
        ),
        ("stream", Pattern::Stream { events: 2_000_000 }),
    ];
    for (name, pattern) in outcomes {
        print(&run(name, pattern, cpu, spin, latency));
    }
    println!(
        "idle: one event per 200 µs–1 ms (the shard parks between events); \
         burst: 64 back to back then 500 µs; stream: as fast as the sender can push \
         (events/s measured at the shard; `full`: sends retried on a full queue)"
    );
}
