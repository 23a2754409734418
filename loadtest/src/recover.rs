//! `storm --recover` (issue 13): connection i subscribes to `channel:<i mod T>` (a topic
//! with history on the gateway), remembers the position of the last publication it got,
//! and at each round drops and reconnects at once with `since`, while the publisher
//! keeps publishing through the gateway's admin API (which, with Redis, publishes with
//! history through `FCALL coregate_publish`). Each connection checks its topic's
//! sequence numbers: a stable client (every recovery succeeded) must see every
//! publication exactly once across the drops. Reports each round's recovery time (drop
//! → `subscribed` with `recovered: true`), how many recovered, and the losses and
//! duplicates of stable clients.
//!
//! It runs in this one process (up to `--max-per-process` connections): recovery needs
//! each connection's state across its reconnects, which the worker fleets do not keep.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use coregate_protocol::{Encoding, StreamPosition};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::StormArgs;
use crate::connect::{self, Params, Ws};
use crate::gaps::{GapStats, SeqTracker};
use crate::histo::{self, lock, Percentiles};
use crate::publisher::{self, TopicPick};
use crate::tokens::Tokens;
use crate::{decode, procfs};

/// What every connection adds to.
struct Tally {
    /// Per round: drop → `subscribed` of those that recovered, µs.
    recovery: Mutex<Vec<Histogram<u64>>>,
    recovered: Vec<AtomicU64>,
    not_recovered: Vec<AtomicU64>,
    gave_up: Vec<AtomicU64>,
    /// Per round: connections back (either way) or given up.
    settled: Vec<AtomicU64>,
}

impl Tally {
    fn new(rounds: usize) -> Tally {
        let counters = || (0..rounds).map(|_| AtomicU64::new(0)).collect();
        Tally {
            recovery: Mutex::new((0..rounds).map(|_| histo::new()).collect()),
            recovered: counters(),
            not_recovered: counters(),
            gave_up: counters(),
            settled: counters(),
        }
    }
}

/// What one connection saw over the run.
struct ConnOutcome {
    topic: usize,
    tracker: SeqTracker,
    /// Every recovery succeeded (so it must have missed nothing).
    stable: bool,
}

/// One round over every connection.
#[derive(Debug, serde::Serialize)]
struct RoundFigures {
    round: usize,
    recovered: u64,
    not_recovered: u64,
    gave_up: u64,
    recovery_p50_ms: f64,
    recovery_p99_ms: f64,
    recovery_max_ms: f64,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    connections: u64,
    topics: u32,
    published: u64,
    rounds: Vec<RoundFigures>,
    stable_clients: u64,
    stable_received: u64,
    stable_losses: u64,
    stable_duplicates: u64,
    gateway_cpu_s: Option<f64>,
}

pub async fn run(args: &StormArgs) -> anyhow::Result<()> {
    let common = &args.common;
    if args.topics == 0 {
        bail!("--recover needs --topics (at least 1)");
    }
    if args.connections > common.max_per_process {
        bail!(
            "--recover runs in one process: at most --max-per-process ({}) connections",
            common.max_per_process
        );
    }
    let params = Arc::new(Params::for_gateway(common).await?);
    let sink = crate::scenario::sink_spec(&args.publish, common.allow_remote).await?;
    let tokens = Arc::new(Tokens::new(&common.token_source()?)?);
    let rounds = args.rounds as usize;
    let tally = Arc::new(Tally::new(rounds));
    let (signal_tx, signals) = watch::channel(None::<(usize, Instant)>);
    let (stop_tx, stop) = watch::channel(false);
    let connecting = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let connected = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.connections {
        let conn = Conn {
            params: params.clone(),
            source: common
                .source_addrs
                .get(i as usize % common.source_addrs.len().max(1))
                .copied(),
            token: tokens.get(i)?,
            topic: (i % u64::from(args.topics)) as usize,
            reconnect_timeout: args.reconnect_timeout,
            backoff: args.backoff,
            tally: tally.clone(),
        };
        let (connecting, connected) = (connecting.clone(), connected.clone());
        let (signals, stop) = (signals.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let opened = {
                let _permit = connecting.acquire().await.ok()?;
                conn.open(None).await.ok()?
            };
            connected.fetch_add(1, Ordering::Relaxed);
            Some(conn.run(opened, signals, stop).await)
        }));
    }
    let connect_limit = started + common.connect_phase_timeout;
    while connected.load(Ordering::Relaxed) < args.connections && Instant::now() < connect_limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open = connected.load(Ordering::Relaxed);
    println!(
        "recover: {open}/{} connections ready and subscribed in {:.2}s",
        args.connections,
        started.elapsed().as_secs_f64()
    );
    let cpu_before = common.gateway_pid.and_then(procfs::cpu_seconds);
    // Publications flow over the whole --duration; the rounds are spread within it.
    let publishing = tokio::spawn(publisher::run(publisher::Plan {
        sink,
        pick: TopicPick::RoundRobin,
        rate: args.publish.rate,
        topics: args.topics,
        duration: common.duration,
        payload_bytes: args.publish.payload_bytes,
        op: args.publish.op.clone(),
        connections: args.publish.publishers,
    }));
    let publish_start = Instant::now();
    for round in 0..rounds {
        let at = publish_start
            + common
                .duration
                .mul_f64((round + 1) as f64 / (rounds + 1) as f64);
        tokio::time::sleep_until(at).await;
        let _ = signal_tx.send(Some((round, Instant::now())));
        let limit = Instant::now() + args.reconnect_timeout + Duration::from_secs(1);
        while tally.settled[round].load(Ordering::Relaxed) < open && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let published = publishing.await?;
    tokio::time::sleep(args.publish.drain).await;
    let cpu_s = cpu_before.zip(common.gateway_pid.and_then(procfs::cpu_seconds));
    let _ = stop_tx.send(true);
    let mut outcomes = Vec::new();
    for task in tasks {
        if let Ok(Some(outcome)) = task.await {
            outcomes.push(outcome);
        }
    }
    let report = report(
        args,
        &tally,
        &outcomes,
        &published,
        cpu_s.map(|(a, b)| b - a),
    );
    print(&report);
    common.write_report(&report)
}

fn report(
    args: &StormArgs,
    tally: &Tally,
    outcomes: &[ConnOutcome],
    published: &publisher::Outcome,
    gateway_cpu_s: Option<f64>,
) -> Report {
    let hists = lock(&tally.recovery);
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let rounds = (0..args.rounds as usize)
        .map(|round| {
            let p = Percentiles::of(&hists[round]);
            RoundFigures {
                round,
                recovered: load(&tally.recovered[round]),
                not_recovered: load(&tally.not_recovered[round]),
                gave_up: load(&tally.gave_up[round]),
                recovery_p50_ms: p.p50 as f64 / 1000.0,
                recovery_p99_ms: p.p99 as f64 / 1000.0,
                recovery_max_ms: p.max as f64 / 1000.0,
            }
        })
        .collect();
    let mut stable = GapStats::default();
    let mut stable_clients = 0;
    for outcome in outcomes.iter().filter(|o| o.stable) {
        stable_clients += 1;
        let count = published.published.get(outcome.topic).copied().unwrap_or(0);
        stable += outcome.tracker.finish(count);
    }
    Report {
        connections: outcomes.len() as u64,
        topics: args.topics,
        published: published.total(),
        rounds,
        stable_clients,
        stable_received: stable.received,
        stable_losses: stable.losses,
        stable_duplicates: stable.duplicates,
        gateway_cpu_s,
    }
}

fn print(report: &Report) {
    for r in &report.rounds {
        println!(
            "round {}: {} recovered, {} not recovered, {} gave up; recovery (drop → subscribed) p50 {:.1}ms p99 {:.1}ms max {:.1}ms",
            r.round, r.recovered, r.not_recovered, r.gave_up, r.recovery_p50_ms, r.recovery_p99_ms, r.recovery_max_ms
        );
    }
    println!(
        "published {} over {} topics; {} stable clients received {}: {} lost, {} twice",
        report.published,
        report.topics,
        report.stable_clients,
        report.stable_received,
        report.stable_losses,
        report.stable_duplicates
    );
    if let Some(cpu) = report.gateway_cpu_s {
        println!("gateway CPU while publishing: {cpu:.2}s");
    }
}

/// One connection's fixed parts.
struct Conn {
    params: Arc<Params>,
    source: Option<std::net::IpAddr>,
    token: String,
    topic: usize,
    reconnect_timeout: Duration,
    backoff: Duration,
    tally: Arc<Tally>,
}

/// What a connection holds across its reconnects.
#[derive(Default)]
struct State {
    tracker: SeqTracker,
    last: Option<StreamPosition>,
    stable: bool,
}

impl State {
    fn see(&mut self, seen: &decode::Seen<'_>, topic: &str) {
        if seen.topic.as_deref() != Some(topic) {
            return;
        }
        if let Some(seq) = seen.seq {
            self.tracker.observe(seq);
        }
        if let Some((offset, epoch)) = &seen.position {
            self.last = Some(StreamPosition {
                offset: *offset,
                epoch: epoch.clone(),
            });
        }
    }
}

impl Conn {
    fn topic_name(&self) -> String {
        format!("channel:{}", self.topic)
    }

    async fn open(&self, since: Option<&StreamPosition>) -> Result<connect::Opened, String> {
        let since = since.map(|at| BTreeMap::from([(self.topic_name(), at.clone())]));
        connect::open_since(
            &self.params,
            self.source,
            &self.token,
            vec![self.topic_name()],
            since,
        )
        .await
    }

    async fn run(
        self,
        opened: connect::Opened,
        mut signals: watch::Receiver<Option<(usize, Instant)>>,
        mut stop: watch::Receiver<bool>,
    ) -> ConnOutcome {
        let topic = self.topic_name();
        let encoding = self.params.encoding;
        let mut state = State {
            stable: true,
            ..State::default()
        };
        state.last = opened.subscribed.as_ref().and_then(position_of);
        for seen in &opened.pending {
            state.see(seen, &topic);
        }
        let mut ws = Some(opened.ws);
        loop {
            let event = tokio::select! {
                _ = stop.changed() => break,
                changed = signals.changed() => match changed {
                    Ok(()) => *signals.borrow_and_update(),
                    Err(_) => break,
                },
                alive = read(ws.as_mut(), encoding, &mut state, &topic) => {
                    if !alive {
                        ws = None;
                    }
                    continue;
                }
            };
            let Some((round, dropped_at)) = event else {
                continue;
            };
            drop(ws.take());
            ws = self.recover(round, dropped_at, &mut state).await;
        }
        ConnOutcome {
            topic: self.topic,
            tracker: state.tracker,
            stable: state.stable,
        }
    }

    /// Reconnects with `since` until back or the round's limit passes.
    async fn recover(&self, round: usize, dropped_at: Instant, state: &mut State) -> Option<Ws> {
        let deadline = dropped_at + self.reconnect_timeout;
        let mut backoff = self.backoff.max(Duration::from_millis(1));
        let topic = self.topic_name();
        let tally = &self.tally;
        while Instant::now() < deadline {
            let attempt = tokio::time::timeout_at(deadline, self.open(state.last.as_ref())).await;
            if let Ok(Ok(opened)) = attempt {
                let recovered = opened.subscribed.as_ref().and_then(|s| s.recovered);
                if recovered == Some(true) {
                    tally.recovered[round].fetch_add(1, Ordering::Relaxed);
                    let took = dropped_at.elapsed().as_micros() as u64;
                    histo::record(&mut lock(&tally.recovery)[round], took);
                } else {
                    // The client would reload from the backend: it no longer counts
                    // for exactly-once.
                    tally.not_recovered[round].fetch_add(1, Ordering::Relaxed);
                    state.stable = false;
                    state.last = opened.subscribed.as_ref().and_then(position_of);
                }
                for seen in &opened.pending {
                    state.see(seen, &topic);
                }
                tally.settled[round].fetch_add(1, Ordering::Relaxed);
                return Some(opened.ws);
            }
            tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64())).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        tally.gave_up[round].fetch_add(1, Ordering::Relaxed);
        tally.settled[round].fetch_add(1, Ordering::Relaxed);
        state.stable = false;
        None
    }
}

fn position_of(subscribed: &decode::Seen<'_>) -> Option<StreamPosition> {
    subscribed
        .subscribed_position
        .as_ref()
        .map(|(offset, epoch)| StreamPosition {
            offset: *offset,
            epoch: epoch.clone(),
        })
}

/// Reads one frame into `state`; `false` once the connection is gone (pending forever
/// without one). Pings are not needed: the runs are shorter than the heartbeat.
async fn read(ws: Option<&mut Ws>, encoding: Encoding, state: &mut State, topic: &str) -> bool {
    let Some(ws) = ws else {
        return std::future::pending().await;
    };
    match ws.next().await {
        Some(Ok(Message::Text(text))) => {
            decode::for_each(encoding, text.as_bytes(), |seen| state.see(&seen, topic));
            true
        }
        Some(Ok(Message::Binary(bytes))) => {
            decode::for_each(encoding, &bytes, |seen| state.see(&seen, topic));
            true
        }
        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => false,
        Some(Ok(_)) => true,
    }
}
