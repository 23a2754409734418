//! A fleet: many connections held by one process. It opens them with bounded concurrency,
//! runs each one's role, reports progress every second (with that second's latency
//! histogram), announces when the connect phase is over, and on the stop signal gathers
//! every connection's outcome into one [`FleetReport`].
//!
//! The same code runs in the parent (one process) or in each worker process; only the
//! transport of [`FleetEvent`]s and [`Control`] differs (see `workers`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use coregate_protocol::Encoding;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::chat::{self, ChatCounters, ChatReport};
use crate::chatmix::ChatMix;
use crate::client::{self, End, Outcome, Role, Shared};
use crate::connect::{self, Params};
use crate::gaps::GapStats;
use crate::histo::{self, lock, Striped};
use crate::storm::{self, RoundReport, Rounds, StormSpec};
use crate::targets;
use crate::tokens::{unix_now, TokenSource, Tokens};

/// What one fleet does; travels to worker processes as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetSpec {
    pub url: String,
    pub msgpack: bool,
    /// Connection indexes `first .. first + count` (they pick token, source, topic, role).
    pub first: u64,
    pub count: u64,
    pub source_addrs: Vec<IpAddr>,
    pub tokens: TokenSource,
    /// 0: connections don't subscribe (idle).
    pub topics: u32,
    pub slow_fraction: f64,
    pub concurrency: usize,
    pub connect_timeout_ms: u64,
    pub heartbeat_ms: Option<u64>,
    pub slow_drain_ms: u64,
    /// SO_RCVBUF of slow subscribers' sockets; the kernel's default when `None`.
    #[serde(default)]
    pub slow_recv_buffer: Option<u32>,
    pub read_buffer: usize,
    /// What the connections do beyond subscribing and reading.
    #[serde(default)]
    pub kind: FleetKind,
}

/// The scenario-specific behaviour of a fleet's connections.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub enum FleetKind {
    /// idle / fanout / slow: the roles of [`FleetSpec::role`].
    #[default]
    Plain,
    /// Drop and reconnect on each round's signal.
    Storm(StormSpec),
    /// The chat mix (`topics` is then the mix's topic count).
    Chat(ChatMix),
}

impl FleetSpec {
    /// The role of connection `i`: slow ones are spread evenly by index.
    pub fn role(&self, i: u64) -> Role {
        if let FleetKind::Chat(mix) = &self.kind {
            // Stable users are checked for losses like healthy subscribers; churners not.
            return if mix.is_churner(i) {
                Role::Idle
            } else {
                Role::Subscriber { topic: 0 }
            };
        }
        if self.topics == 0 {
            return Role::Idle;
        }
        let topic = (i % u64::from(self.topics)) as u32;
        if is_slow(i, self.slow_fraction) {
            Role::Slow { topic }
        } else {
            Role::Subscriber { topic }
        }
    }
}

/// Whether connection `i` is slow, for a given fraction (exactly ⌊n·f⌋ of the first n).
pub fn is_slow(i: u64, fraction: f64) -> bool {
    let f = fraction.clamp(0.0, 1.0);
    ((i + 1) as f64 * f).floor() > (i as f64 * f).floor()
}

/// A fleet → parent message.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FleetEvent {
    Progress(ProgressTick),
    Connected(ConnectedSummary),
    Done(Box<FleetReport>),
    /// The fleet failed or its process ended without a report.
    Failed {
        message: String,
    },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProgressTick {
    pub open: u64,
    pub failed: u64,
    /// Deliveries so far (cumulative).
    pub deliveries: u64,
    /// Latency (µs) of the deliveries since the previous tick, serialized.
    pub interval: String,
    /// Storm: connections back or given up, over every round so far.
    #[serde(default)]
    pub settled: u64,
}

/// Sent once every connection has either opened or failed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConnectedSummary {
    pub open: u64,
    pub failed: u64,
    /// Open healthy subscribers per topic (to know how many deliveries to expect).
    pub healthy_by_topic: Vec<u64>,
}

/// Parent → fleet, one JSON line each for worker processes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "control", rename_all = "snake_case")]
pub enum Control {
    /// Storm round `round`: every connection drops at `at_ns` (unix ns) and reconnects.
    Storm { round: u32, at_ns: u64 },
    /// Stop, with the number of publications made on each topic.
    Stop { published: Vec<u64> },
}

/// Everything a fleet measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FleetReport {
    pub attempted: u64,
    pub connected: u64,
    pub errors: BTreeMap<String, u64>,
    /// First connect attempt and last `ready`, unix ns.
    pub connect_started_ns: u64,
    pub connect_finished_ns: u64,
    /// Connect → ready(/subscribed) time, µs, serialized.
    pub connect_hist: String,
    pub healthy: u64,
    pub slow: u64,
    pub deliveries: u64,
    pub last_delivery_ns: u64,
    /// Latency (µs) of every delivery, serialized.
    pub latency_hist: String,
    pub losses: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub decode_errors: u64,
    /// Ends of non-slow connections: "open", "close_<code>", or a broken kind.
    pub ends: BTreeMap<String, u64>,
    /// Ends of slow subscribers.
    pub slow_ends: BTreeMap<String, u64>,
    /// Storm: each round as this fleet saw it.
    #[serde(default)]
    pub storm: Vec<RoundReport>,
    /// Deliveries counted by the sequence trackers (subscribers' own topics; chat: stable
    /// users' channels).
    #[serde(default)]
    pub tracked_received: u64,
    /// Chat: typing and churn counters.
    #[serde(default)]
    pub chat: Option<ChatReport>,
}

/// Runs a fleet: events go to `events`; the run ends when `control` delivers (or closes).
pub async fn run(
    spec: FleetSpec,
    events: mpsc::UnboundedSender<FleetEvent>,
    mut control: mpsc::UnboundedReceiver<Control>,
) -> anyhow::Result<()> {
    let tokens = Arc::new(Tokens::new(&spec.tokens)?);
    let target = targets::parse(&spec.url, "ws").await?;
    let encoding = if spec.msgpack {
        Encoding::MsgPack
    } else {
        Encoding::Json
    };
    let params = Arc::new(Params {
        target,
        encoding,
        read_buffer: spec.read_buffer,
        recv_buffer: None,
    });
    let slow_params = Arc::new(Params {
        recv_buffer: spec.slow_recv_buffer,
        ..(*params).clone()
    });
    let shared = Arc::new(Shared {
        encoding,
        latency: Striped::new(16),
        deliveries: AtomicU64::new(0),
        decode_errors: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        heartbeat_override: spec.heartbeat_ms.map(Duration::from_millis),
        slow_drain: Duration::from_millis(spec.slow_drain_ms),
    });
    let counters = Arc::new(Counters::default());
    let connect_hist = Arc::new(Mutex::new(histo::new()));
    // Every delivery's latency; the ticker moves each second's histogram into it.
    let cumulative = Arc::new(Mutex::new(histo::new()));
    let errors = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let healthy_by_topic = Arc::new(Mutex::new(vec![0u64; spec.topics as usize]));
    let (stop_tx, stop_rx) = watch::channel(None);
    let semaphore = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let connect_timeout = Duration::from_millis(spec.connect_timeout_ms);
    let started_ns = unix_now().as_nanos() as u64;
    let kind = Arc::new(spec.kind.clone());
    let rounds = Arc::new(Rounds::new(match &spec.kind {
        FleetKind::Storm(s) => s.rounds,
        _ => 0,
    }));
    let chat_counters = Arc::new(ChatCounters::default());
    let (signal_tx, signal_rx) = watch::channel(None);

    let mut tasks = Vec::with_capacity(spec.count as usize);
    for i in spec.first..spec.first + spec.count {
        let role = spec.role(i);
        let source = (!spec.source_addrs.is_empty())
            .then(|| spec.source_addrs[(i % spec.source_addrs.len() as u64) as usize]);
        let params = match role {
            Role::Slow { .. } => slow_params.clone(),
            _ => params.clone(),
        };
        let (shared, counters, tokens) = (shared.clone(), counters.clone(), tokens.clone());
        let (connect_hist, errors, healthy_by_topic) = (
            connect_hist.clone(),
            errors.clone(),
            healthy_by_topic.clone(),
        );
        let (semaphore, stop) = (semaphore.clone(), stop_rx.clone());
        let (kind, rounds, chat_counters, signals) = (
            kind.clone(),
            rounds.clone(),
            chat_counters.clone(),
            signal_rx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = semaphore.acquire_owned().await.ok();
            let begun = std::time::Instant::now();
            let topic_ids: Vec<u32> = match (&*kind, role) {
                (FleetKind::Chat(mix), _) => mix.topics_of(i),
                (_, Role::Idle) => Vec::new(),
                (_, Role::Subscriber { topic } | Role::Slow { topic }) => vec![topic],
            };
            let token = tokens.get(i);
            let opened = match &token {
                Ok(token) => tokio::time::timeout(
                    connect_timeout,
                    connect::open(&params, source, token, chat::topic_names(&topic_ids)),
                )
                .await
                .unwrap_or_else(|_| Err("timeout".into())),
                Err(_) => Err("token".into()),
            };
            drop(permit);
            let opened = match opened {
                Ok(opened) => opened,
                Err(kind) => {
                    *lock(&errors).entry(kind).or_default() += 1;
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            };
            histo::record(&mut lock(&connect_hist), begun.elapsed().as_micros() as u64);
            if let Role::Subscriber { .. } = role {
                let mut by_topic = lock(&healthy_by_topic);
                for t in &topic_ids {
                    if let Some(n) = by_topic.get_mut(*t as usize) {
                        *n += 1;
                    }
                }
            }
            counters.open.fetch_add(1, Ordering::Relaxed);
            counters
                .last_ready_ns
                .fetch_max(unix_now().as_nanos() as u64, Ordering::Relaxed);
            let token = token.unwrap_or_default();
            let outcome = match &*kind {
                FleetKind::Plain => client::run(i, role, opened, &shared, stop).await,
                FleetKind::Storm(storm_spec) => {
                    let conn = storm::Conn {
                        index: i,
                        params: &params,
                        source,
                        token: &token,
                        topics: chat::topic_names(&topic_ids),
                        spec: storm_spec,
                        connect_timeout,
                        rounds: &rounds,
                    };
                    let end = storm::run(conn, opened.ws, opened.heartbeat, signals, stop).await;
                    Outcome {
                        role,
                        end,
                        gaps: GapStats::default(),
                    }
                }
                FleetKind::Chat(mix) => {
                    let conn = chat::Conn {
                        index: i,
                        params: &params,
                        source,
                        token: &token,
                        mix,
                        shared: &shared,
                        counters: &chat_counters,
                        connect_timeout,
                    };
                    let (end, gaps) = chat::run(conn, opened, stop).await;
                    Outcome { role, end, gaps }
                }
            };
            if outcome.end != End::Open {
                counters.open.fetch_sub(1, Ordering::Relaxed);
            }
            Some(outcome)
        }));
    }

    // Announce the end of the connect phase, then report progress every second.
    let ticker = {
        let (events, counters, shared, healthy_by_topic, cumulative, rounds) = (
            events.clone(),
            counters.clone(),
            shared.clone(),
            healthy_by_topic.clone(),
            cumulative.clone(),
            rounds.clone(),
        );
        let total = spec.count;
        tokio::spawn(async move {
            let mut cumulative_connected = false;
            let mut next_progress = tokio::time::Instant::now() + Duration::from_secs(1);
            loop {
                tokio::time::sleep(Duration::from_millis(25)).await;
                let (open, failed) = (
                    counters.open.load(Ordering::Relaxed),
                    counters.failed.load(Ordering::Relaxed),
                );
                if !cumulative_connected && open + failed >= total {
                    cumulative_connected = true;
                    let summary = ConnectedSummary {
                        open,
                        failed,
                        healthy_by_topic: lock(&healthy_by_topic).clone(),
                    };
                    let _ = events.send(FleetEvent::Connected(summary));
                }
                if tokio::time::Instant::now() >= next_progress {
                    next_progress += Duration::from_secs(1);
                    let mut interval = histo::new();
                    shared.latency.drain_into(&mut interval);
                    let _ = lock(&cumulative).add(&interval);
                    let tick = ProgressTick {
                        open,
                        failed,
                        deliveries: shared.deliveries.load(Ordering::Relaxed),
                        interval: histo::encode(&interval),
                        settled: rounds.settled.load(Ordering::Relaxed),
                    };
                    if events.send(FleetEvent::Progress(tick)).is_err() {
                        return;
                    }
                }
            }
        })
    };

    let published = loop {
        match control.recv().await {
            Some(Control::Storm { round, at_ns }) => {
                let _ = signal_tx.send(Some(storm::Signal { round, at_ns }));
            }
            Some(Control::Stop { published }) => break published,
            None => break Vec::new(),
        }
    };
    let _ = stop_tx.send(Some(Arc::new(published)));
    let mut report = FleetReport {
        attempted: spec.count,
        connect_started_ns: started_ns,
        ..FleetReport::default()
    };
    let mut gaps = GapStats::default();
    for task in tasks {
        let Ok(Some(outcome)) = task.await else {
            continue;
        };
        report.connected += 1;
        gaps += outcome.gaps;
        let end = match &outcome.end {
            End::Open => "open".to_owned(),
            End::Closed(code) => format!("close_{code}"),
            End::Broken(kind) => kind.clone(),
        };
        if matches!(outcome.role, Role::Slow { .. }) {
            report.slow += 1;
            *report.slow_ends.entry(end).or_default() += 1;
        } else {
            if matches!(outcome.role, Role::Subscriber { .. }) {
                report.healthy += 1;
            }
            *report.ends.entry(end).or_default() += 1;
        }
    }
    ticker.abort();
    let _ = ticker.await;
    // Whatever the ticker did not move yet.
    let mut latency = lock(&cumulative).clone();
    shared.latency.drain_into(&mut latency);
    report.errors = lock(&errors).clone();
    report.connect_finished_ns = counters.last_ready_ns.load(Ordering::Relaxed);
    report.connect_hist = histo::encode(&lock(&connect_hist));
    report.deliveries = shared.deliveries.load(Ordering::Relaxed);
    report.last_delivery_ns = shared.last_delivery_ns.load(Ordering::Relaxed);
    report.tracked_received = gaps.received;
    report.losses = gaps.losses;
    report.duplicates = gaps.duplicates;
    report.reordered = gaps.reordered;
    report.decode_errors = shared.decode_errors.load(Ordering::Relaxed);
    report.latency_hist = histo::encode(&latency);
    report.storm = rounds.reports();
    if let FleetKind::Chat(_) = &spec.kind {
        report.chat = Some(chat_counters.report());
    }
    events
        .send(FleetEvent::Done(Box::new(report)))
        .context("reporting")?;
    Ok(())
}

#[derive(Default)]
struct Counters {
    open: AtomicU64,
    failed: AtomicU64,
    last_ready_ns: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_ones_are_spread_evenly() {
        let slow: Vec<u64> = (0..20).filter(|&i| is_slow(i, 0.25)).collect();
        assert_eq!(slow, vec![3, 7, 11, 15, 19]);
        assert_eq!((0..1000).filter(|&i| is_slow(i, 0.1)).count(), 100);
        assert!(!(0..100).any(|i| is_slow(i, 0.0)));
        assert!((0..100).all(|i| is_slow(i, 1.0)));
    }
}
