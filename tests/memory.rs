//! End-to-end: clients that flood and never read cannot grow the gateway's memory, before
//! or after `ready`, and well-behaved clients are served meanwhile. The bounds themselves
//! are unit-tested in the shards crate (`session::tests`); this proves them on a real
//! process, with its RSS, and measures what the floods cost a well-behaved client's ping
//! round trip (BENCHMARKS.md, "Memory under hostile clients").
//!
//! The canaries run on a thread and a runtime of their own, so that their round trips
//! measure the gateway (and the machine), not the flooders' runtime; and they ping often
//! enough (several hundred samples) for a p99 that is not just the maximum.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{gateway_binary, token, Client, Gateway};
use coregate_protocol::{ClientMessage, Encoding};
use coregate_shards::ws::client_frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Concurrent flooders per phase: half of them upgrade without a token (and never
/// identify), half with one (ready at once).
const FLOODERS: usize = 6;
/// How long each phase floods.
const PHASE: Duration = Duration::from_secs(2);
/// Every flood phase runs this many times: memory that grew in the first round must not
/// grow again in the next (what is allocated is reused, not kept per connection).
const ROUNDS: usize = 2;
/// Canary connections, pinged in turn, one every [`CANARY_TICK`]: each pings every
/// 125 ms, within the ping allowance (10 a second), as a latency probe would.
const CANARIES: usize = 5;
const CANARY_TICK: Duration = Duration::from_millis(25);

/// The canaries' ping p99 target under the floods, for a release build.
const CANARY_TARGET: Duration = Duration::from_millis(10);
/// What a debug build (this build's gateway, the default, as CI runs it on 2 shared
/// cores: ~12 ms measured) is held to, and a release build on a machine too busy to
/// check the target: a bound that starving a shard breaks (a pong flood held the
/// canaries for whole phases, p99 0.3–2 s, before issue 18's fix).
const CANARY_STARVATION_BOUND: Duration = Duration::from_millis(50);
/// How much the gateway's RSS may grow while flooded (measured: ≤ 4.5 MiB, release and
/// debug; unbounded, the first flood grew it by hundreds of MiB in seconds).
const PEAK_GROWTH: u64 = 12 * 1024 * 1024;
/// How much it may keep once the flooders are gone (measured: ≤ 3 MiB, what mimalloc
/// keeps for reuse).
const KEPT_GROWTH: u64 = 8 * 1024 * 1024;
/// How much higher the second round's peak may be than the first's: the floods' memory
/// is reused, not kept per connection (each round makes ~10,000–30,000 connections, so
/// this catches anything from ~100 bytes a connection kept).
const REPEATED_GROWTH: u64 = 2 * 1024 * 1024;

/// The p99 the canaries are held to: [`CANARY_TARGET`] for a release gateway, unless
/// the machine's own p99 with no flood (`quiet_p99`, measured first) leaves no room
/// for it; [`CANARY_STARVATION_BOUND`] otherwise.
fn canary_p99_bound(quiet_p99: Duration) -> Duration {
    if gateway_is_release() && quiet_p99 <= CANARY_TARGET / 2 {
        CANARY_TARGET
    } else {
        CANARY_STARVATION_BOUND
    }
}

/// Whether the gateway under test is a release build (`COREGATE_BIN=…/release/coregate`).
fn gateway_is_release() -> bool {
    gateway_binary()
        .components()
        .any(|c| c.as_os_str() == "release")
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// What a flooder sends, over and over, never reading after the upgrade's response.
#[derive(Clone, Copy, Debug)]
enum Flood {
    /// 64 KB text frames of `{"op":"ping"}` lines.
    AppPings,
    /// WebSocket ping frames.
    WebSocketPings,
    /// WebSocket pong frames, which nothing asked for.
    WebSocketPongs,
    /// Empty text frames.
    EmptyFrames,
}

impl Flood {
    const ALL: [Flood; 4] = [
        Flood::AppPings,
        Flood::WebSocketPings,
        Flood::WebSocketPongs,
        Flood::EmptyFrames,
    ];

    /// What the flooder writes at a time.
    fn chunk(self) -> Vec<u8> {
        let repeat = |frame: Vec<u8>| frame.repeat(500);
        match self {
            Flood::AppPings => {
                let lines = vec![r#"{"op":"ping"}"#; 64 * 1024 / 14].join("\n");
                client_frame(0x1, lines.as_bytes())
            }
            Flood::WebSocketPings => repeat(client_frame(0x9, b"ping")),
            Flood::WebSocketPongs => repeat(client_frame(0xA, b"pong")),
            Flood::EmptyFrames => repeat(client_frame(0x1, b"")),
        }
    }
}

/// Connects (with `token` in the query, or none), upgrades, then writes `flood` until
/// the gateway closes the connection or `until`; then connects again. Returns how many
/// connections it made.
async fn flooder(
    gw: std::net::SocketAddr,
    token: Option<String>,
    flood: Flood,
    until: Instant,
) -> usize {
    let chunk = flood.chunk();
    let query = token.map(|t| format!("?token={t}")).unwrap_or_default();
    let mut connections = 0;
    while Instant::now() < until {
        let Ok(mut stream) = tokio::net::TcpStream::connect(gw).await else {
            continue;
        };
        connections += 1;
        let request = format!(
            "GET /ws{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        if stream.write_all(request.as_bytes()).await.is_err() {
            continue;
        }
        let mut head = [0u8; 256];
        if stream.read(&mut head).await.unwrap_or(0) == 0 {
            continue;
        }
        // Never read again: write until the gateway gives up on us.
        while Instant::now() < until {
            let write = tokio::time::timeout(Duration::from_millis(200), stream.write_all(&chunk));
            match write.await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
    }
    connections
}

/// The flooders' own runtime: two threads at the lowest priority (nice 19), so that on
/// a small machine they take the CPU the gateway and the canaries leave, as remote
/// attackers would, and the canaries' round trips measure the gateway rather than the
/// scheduler's share between it and the test's own load. (The kernel's TCP work that
/// their writes cause on loopback still runs in their time.)
fn flooders_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("flooder")
        .on_thread_start(|| {
            // SAFETY: plain libc call; `who` 0 is the calling thread on Linux.
            let niced = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
            assert_eq!(niced, 0, "nice 19");
        })
        .enable_all()
        .build()
        .unwrap()
}

/// The canaries' round trips, each tagged with the phase it was measured in.
#[derive(Default)]
struct Samples(Mutex<Vec<(usize, Duration)>>);

/// The canaries, on a thread and a current-thread runtime of their own: they ping in
/// turn, one every [`CANARY_TICK`], recording each round trip under the phase that
/// `phase` names, until `stop`.
struct Canaries {
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    samples: Arc<Samples>,
    thread: std::thread::JoinHandle<()>,
}

impl Canaries {
    /// Starts the canaries and returns once every one is ready.
    fn start(gw: Arc<Gateway>) -> Canaries {
        let phase = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Samples::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (phase, stop, samples) = (phase.clone(), stop.clone(), samples.clone());
            std::thread::Builder::new()
                .name("canaries".into())
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    runtime.block_on(async move {
                        let mut clients = Vec::new();
                        for i in 0..CANARIES {
                            let token = token(&format!("canary-{i}"), &[]);
                            clients.push(Client::ready(&gw, &token, Encoding::Json).await);
                        }
                        ready_tx.send(()).unwrap();
                        let mut tick = tokio::time::interval(CANARY_TICK);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        for turn in 0.. {
                            tick.tick().await;
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            let client = &mut clients[turn % CANARIES];
                            let sent = Instant::now();
                            let r = client.send(ClientMessage::Ping).await;
                            assert_eq!(client.expect_op("pong").await.r#ref, Some(r));
                            let rtt = sent.elapsed();
                            let now = phase.load(Ordering::Relaxed);
                            samples.0.lock().unwrap().push((now, rtt));
                        }
                        // Still served after the floods.
                        for client in &mut clients {
                            let r = client.send(ClientMessage::Ping).await;
                            assert_eq!(client.expect_op("pong").await.r#ref, Some(r));
                        }
                    });
                })
                .unwrap()
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the canaries are ready");
        Canaries {
            phase,
            stop,
            samples,
            thread,
        }
    }

    /// Stops the canaries; every round trip, by phase.
    fn finish(self) -> Vec<(usize, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .expect("the canaries ran without failing");
        std::mem::take(&mut *self.samples.0.lock().unwrap())
    }
}

/// p50, p99 and the maximum of `rtts` (sorted here).
fn percentiles(rtts: &mut [Duration]) -> (Duration, Duration, Duration) {
    rtts.sort();
    let at = |q: usize| rtts[(rtts.len() * q / 100).min(rtts.len() - 1)];
    (at(50), at(99), rtts[rtts.len() - 1])
}

/// How many of `rtts` are over `bound`.
fn over(rtts: &[Duration], bound: Duration) -> usize {
    rtts.iter().filter(|rtt| **rtt > bound).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_that_are_never_read_leave_memory_bounded_and_the_canaries_served() {
    let gw = Arc::new(Gateway::start(&[]));
    let pid = gw.pid();
    let canaries = Canaries::start(gw.clone());
    let before = rss_bytes(pid);
    // Phase 0: no flood, the floor of the canaries' round trips on this machine.
    let mut names = vec!["quiet".to_owned()];
    tokio::time::sleep(PHASE).await;
    let flood_token = token("flood", &[]);
    let flooders_runtime = flooders_runtime();
    let mut round_peaks = Vec::new();
    for round in 1..=ROUNDS {
        let mut round_peak = 0;
        for flood in Flood::ALL {
            let name = format!("{flood:?}");
            names.push(format!("round {round}, {name}"));
            canaries.phase.store(names.len() - 1, Ordering::Relaxed);
            let until = Instant::now() + PHASE;
            let flooders: Vec<_> = (0..FLOODERS)
                .map(|i| {
                    let token = (i % 2 == 1).then(|| flood_token.clone());
                    flooders_runtime.spawn(flooder(gw.ws, token, flood, until))
                })
                .collect();
            while Instant::now() < until {
                round_peak = round_peak.max(rss_bytes(pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut connections = 0;
            for flooder in flooders {
                connections += flooder.await.unwrap();
            }
            eprintln!(
                "round {round}, {name}: {connections} flood connections, RSS {:.1} MiB",
                mib(rss_bytes(pid))
            );
        }
        round_peaks.push(round_peak);
    }
    flooders_runtime.shutdown_background();
    canaries.phase.store(names.len(), Ordering::Relaxed);
    names.push("after".to_owned());
    // Every flooder's connection is gone (only the canaries are left) before the
    // memory is read again.
    gw.wait_metric(
        "coregate_connections",
        CANARIES as f64,
        Duration::from_secs(10),
    )
    .await;
    let after = rss_bytes(pid);
    let samples = canaries.finish();

    let mut quiet_p99 = Duration::ZERO;
    let mut flooded = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let mut rtts: Vec<Duration> = samples
            .iter()
            .filter(|(phase, _)| *phase == index)
            .map(|(_, rtt)| *rtt)
            .collect();
        if rtts.is_empty() {
            continue;
        }
        let (p50, p99, max) = percentiles(&mut rtts);
        eprintln!(
            "canaries, {name}: {} pings, p50 {p50:.2?}, p99 {p99:.2?}, max {max:.2?}, \
             over 10 ms: {}",
            rtts.len(),
            over(&rtts, CANARY_TARGET),
        );
        if index == 0 {
            quiet_p99 = p99;
        } else if index < names.len() - 1 {
            flooded.extend(rtts);
        }
    }
    let (p50, p99, max) = percentiles(&mut flooded);
    eprintln!(
        "canaries during the floods: {} pings, p50 {p50:.2?}, p99 {p99:.2?}, max {max:.2?}, \
         over 10 ms: {}",
        flooded.len(),
        over(&flooded, CANARY_TARGET),
    );
    eprintln!(
        "RSS before {:.1} MiB, peak per round {:.1?} MiB, after {:.1} MiB",
        mib(before),
        round_peaks.iter().map(|p| mib(*p)).collect::<Vec<_>>(),
        mib(after)
    );
    let peak = round_peaks.iter().copied().max().unwrap_or(before);
    assert!(
        peak < before + PEAK_GROWTH,
        "peak {:.1} MiB from {:.1} MiB",
        mib(peak),
        mib(before)
    );
    assert!(
        round_peaks[1] <= round_peaks[0] + REPEATED_GROWTH,
        "the second round grew the gateway again: {:.1} MiB after {:.1} MiB",
        mib(round_peaks[1]),
        mib(round_peaks[0])
    );
    assert!(
        after < before + KEPT_GROWTH,
        "after the floods: {:.1} MiB from {:.1} MiB",
        mib(after),
        mib(before)
    );
    let bound = canary_p99_bound(quiet_p99);
    if gateway_is_release() && bound != CANARY_TARGET {
        eprintln!(
            "the machine's own p99 ({quiet_p99:.2?} with no flood) leaves no room to check \
             the {CANARY_TARGET:?} target: held to {bound:?}"
        );
    }
    assert!(
        p99 < bound,
        "canary ping p99 {p99:.2?} (max {max:.2?}) during the floods, over {bound:?}"
    );
}
