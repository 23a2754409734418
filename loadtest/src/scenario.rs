//! The runs themselves: checking targets, splitting connections into fleets, driving the
//! phases (connect, settle/publish/storm rounds, drain, stop) and building the summary.
//! Each run returns its [`Summary`]; `main` (or `sweep`) prints and saves it.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::time::Instant;

use crate::chat::ChatReport;
use crate::chatmix::ChatMix;
use crate::cli::{ChatArgs, Common, FanoutArgs, IdleArgs, PublishArgs, SlowOptions, StormArgs};
use crate::collect::Collector;
use crate::fleet::{Control, FleetKind, FleetSpec};
use crate::histo::Percentiles;
use crate::procfs;
use crate::publisher::{self, TopicPick};
use crate::report::{
    self, ChatFigures, ConnectFigures, FanoutFigures, GatewayFigures, SlowFigures, StormFigures,
    Summary,
};
use crate::sink::SinkSpec;
use crate::storm::{self, StormSpec};
use crate::targets;
use crate::tokens::unix_now;
use crate::workers::{self, Fleets};

/// Most connections one process may be asked to hold (20 000 descriptors per process).
const HARD_MAX_PER_PROCESS: u64 = 18_000;

/// Connections, subscriptions and roles of a run.
struct Shape {
    connections: u64,
    topics: u32,
    slow: Option<SlowOptions>,
    kind: FleetKind,
}

/// Checks the targets and splits the connections into fleet specs.
async fn plan(common: &Common, shape: &Shape) -> anyhow::Result<(Vec<FleetSpec>, bool)> {
    let target = targets::parse(&common.url, "ws").await?;
    targets::check_loopback("target", target.addr.ip(), common.allow_remote)?;
    for ip in &common.source_addrs {
        targets::check_loopback("source address", *ip, common.allow_remote)?;
    }
    if common.max_per_process == 0 || common.max_per_process > HARD_MAX_PER_PROCESS {
        bail!(
            "--max-per-process must be 1..={HARD_MAX_PER_PROCESS} (20 000 descriptors per process)"
        );
    }
    let needed = shape.connections.div_ceil(common.max_per_process).max(1) as usize;
    let processes = match common.processes {
        Some(p) if p < needed => bail!(
            "{} connections need at least {needed} processes at --max-per-process {}",
            shape.connections,
            common.max_per_process
        ),
        Some(p) => p.max(1),
        None => needed,
    };
    let tokens = common.token_source()?;
    let mut specs = Vec::with_capacity(processes);
    let per = shape.connections / processes as u64;
    let extra = shape.connections % processes as u64;
    let mut first = 0;
    for p in 0..processes as u64 {
        let count = per + u64::from(p < extra);
        specs.push(FleetSpec {
            url: common.url.clone(),
            msgpack: matches!(common.encoding, crate::cli::EncodingArg::Msgpack),
            first,
            count,
            source_addrs: common.source_addrs.clone(),
            tokens: tokens.clone(),
            topics: shape.topics,
            slow_fraction: shape.slow.map_or(0.0, |s| s.slow_fraction),
            concurrency: (common.connect_concurrency / processes).max(1),
            connect_timeout_ms: common.connect_timeout.as_millis() as u64,
            heartbeat_ms: common.heartbeat.map(|h| h.as_millis() as u64),
            slow_drain_ms: shape.slow.map_or(0, |s| s.slow_drain.as_millis() as u64),
            slow_recv_buffer: shape.slow.and_then(|s| s.slow_recv_buffer),
            read_buffer: common.read_buffer,
            kind: shape.kind.clone(),
        });
        first += count;
    }
    let local = common.processes.is_none_or(|p| p == 1) && processes == 1;
    Ok((specs, local))
}

/// Starts the fleets and waits for the connect phase to end.
async fn connect_phase(common: &Common, shape: &Shape) -> anyhow::Result<(Fleets, Collector, f64)> {
    let (specs, local) = plan(common, shape).await?;
    let (fleets, events) = workers::start(specs, local).await?;
    let mut collector =
        Collector::new(events, fleets.len(), common.quiet).with_gateway_pid(common.gateway_pid);
    let begun = Instant::now();
    if !collector
        .pump_until(
            begun + common.connect_phase_timeout,
            Collector::all_connected,
        )
        .await
    {
        eprintln!(
            "loadtest: connect phase not over after {:?}; going on",
            common.connect_phase_timeout
        );
    }
    Ok((fleets, collector, begun.elapsed().as_secs_f64()))
}

/// Stops the fleets and collects their reports.
async fn stop_phase(
    fleets: &mut Fleets,
    collector: &mut Collector,
    published: Vec<u64>,
    wait: Duration,
) -> anyhow::Result<report::Merged> {
    collector.phase = "stop";
    fleets.stop(published).await;
    if !collector
        .pump_until(Instant::now() + wait, Collector::all_done)
        .await
    {
        eprintln!("loadtest: not every fleet reported within {wait:?}");
    }
    fleets.reap().await;
    report::merge(collector.reports.iter().flatten())
}

fn connect_figures(requested: u64, m: &report::Merged, phase_s: f64) -> ConnectFigures {
    let span_s = if m.sum.connect_finished_ns > m.sum.connect_started_ns {
        (m.sum.connect_finished_ns - m.sum.connect_started_ns) as f64 / 1e9
    } else {
        phase_s
    };
    let p = Percentiles::of(&m.connect);
    ConnectFigures {
        requested,
        connected: m.sum.connected,
        failed: m.sum.errors.values().sum(),
        errors: m.sum.errors.clone(),
        phase_s: span_s,
        rate_per_s: m.sum.connected as f64 / span_s.max(1e-6),
        p50_ms: p.p50 as f64 / 1000.0,
        p99_ms: p.p99 as f64 / 1000.0,
        max_ms: p.max as f64 / 1000.0,
    }
}

/// The gateway's and the harness's CPU time over one measured window.
struct CpuWindow {
    pid: Option<u32>,
    gateway0: Option<f64>,
    harness0: Option<f64>,
    started: Instant,
}

/// What a [`CpuWindow`] measured.
struct CpuSpent {
    window_s: f64,
    gateway_s: Option<f64>,
    harness_s: Option<f64>,
}

impl CpuWindow {
    fn start(pid: Option<u32>, fleets: &Fleets) -> CpuWindow {
        CpuWindow {
            pid,
            gateway0: pid.and_then(procfs::cpu_seconds),
            harness0: harness_cpu(fleets),
            started: Instant::now(),
        }
    }

    fn finish(&self, fleets: &Fleets) -> CpuSpent {
        let since = |now: Option<f64>, then: Option<f64>| now.zip(then).map(|(b, a)| b - a);
        CpuSpent {
            window_s: self.started.elapsed().as_secs_f64(),
            gateway_s: since(self.pid.and_then(procfs::cpu_seconds), self.gateway0),
            harness_s: since(harness_cpu(fleets), self.harness0),
        }
    }
}

/// CPU seconds of this process and its workers.
fn harness_cpu(fleets: &Fleets) -> Option<f64> {
    let mut total = procfs::self_cpu_seconds()?;
    for pid in fleets.pids() {
        total += procfs::cpu_seconds(pid).unwrap_or(0.0);
    }
    Some(total)
}

fn encoding_name(common: &Common) -> &'static str {
    match common.encoding {
        crate::cli::EncodingArg::Json => "json",
        crate::cli::EncodingArg::Msgpack => "msgpack",
    }
}

/// Prints the summary and writes its JSON and plot where asked.
pub fn output(summary: &Summary, common: &Common) -> anyhow::Result<()> {
    print!("{}", summary.render());
    if let Some(path) = &common.json {
        summary.write_json(path)?;
    }
    if let Some(path) = &common.plot {
        crate::plot::write(path, summary)?;
    }
    if !summary.fleet_failures.is_empty() {
        bail!("{} fleet(s) failed", summary.fleet_failures.len());
    }
    Ok(())
}

/// `idle`: hold N connections, then measure the gateway's memory and idle CPU.
pub async fn idle(args: &IdleArgs) -> anyhow::Result<Summary> {
    let common = &args.common;
    let shape = Shape {
        connections: args.connections,
        topics: 0,
        slow: None,
        kind: FleetKind::Plain,
    };
    let pid = common.gateway_pid;
    let rss_before = pid.and_then(procfs::rss_bytes);
    let anon_before = pid.and_then(procfs::anon_rss_bytes);
    let (mut fleets, mut collector, phase_s) = connect_phase(common, &shape).await?;
    collector.phase = "settle";
    collector.pump_for(args.settle).await;
    let rss_after = pid.and_then(procfs::rss_bytes);
    let anon_after = pid.and_then(procfs::anon_rss_bytes);
    let open_after_settle = collector.open();
    let cpu = CpuWindow::start(pid, &fleets);
    collector.phase = "idle";
    collector.pump_for(common.duration).await;
    let spent = cpu.finish(&fleets);
    let window_s = spent.window_s;
    let merged = stop_phase(
        &mut fleets,
        &mut collector,
        Vec::new(),
        Duration::from_secs(30),
    )
    .await?;

    let gateway = pid.map(|pid| {
        let delta = rss_after.zip(rss_before).map(|(a, b)| a as i64 - b as i64);
        let anon_delta = anon_after
            .zip(anon_before)
            .map(|(a, b)| a as i64 - b as i64);
        let per_connection = |delta: Option<i64>| {
            delta
                .filter(|_| open_after_settle > 0)
                .map(|d| d as f64 / open_after_settle as f64)
        };
        let cpu_s = spent.gateway_s;
        GatewayFigures {
            pid,
            rss_before_bytes: rss_before,
            rss_after_bytes: rss_after,
            rss_delta_bytes: delta,
            bytes_per_connection: per_connection(delta),
            anon_before_bytes: anon_before,
            anon_after_bytes: anon_after,
            anon_bytes_per_connection: per_connection(anon_delta),
            cpu_s,
            window_s,
            cpu_utilization: cpu_s.map(|c| c / window_s),
            deliveries_per_cpu_s: None,
        }
    });
    Ok(Summary {
        mode: "idle",
        encoding: encoding_name(common),
        url: common.url.clone(),
        processes: fleets.len(),
        connect: connect_figures(args.connections, &merged, phase_s),
        gateway,
        ends: merged.sum.ends.clone(),
        harness_cpu_s: spent.harness_s,
        fleet_failures: collector.failures.clone(),
        timeline: collector.timeline.clone(),
        ..Summary::default()
    })
}

/// Where publications go, checked.
pub(crate) async fn sink_spec(
    publish: &PublishArgs,
    allow_remote: bool,
) -> anyhow::Result<SinkSpec> {
    if let Some(url) = &publish.redis_url {
        let rest = url
            .strip_prefix("redis://")
            .context("--redis-url: expected a redis:// URL")?;
        // Host part, after any credentials; the port defaults to 6379.
        let host = rest.rsplit('@').next().unwrap_or(rest);
        let host = host.split('/').next().unwrap_or(host);
        let target = targets::parse(&format!("tcp://{host}"), "tcp")
            .await
            .context("--redis-url")?;
        if !host.contains(':') {
            bail!("--redis-url: give the port explicitly");
        }
        targets::check_loopback("redis", target.addr.ip(), allow_remote)?;
        return Ok(SinkSpec::Redis {
            url: url.clone(),
            prefix: publish.redis_prefix.clone(),
        });
    }
    let admin = targets::parse(&publish.admin, "http")
        .await
        .context("--admin")?;
    targets::check_loopback("admin", admin.addr.ip(), allow_remote)?;
    Ok(SinkSpec::Http {
        admin: admin.addr,
        host: admin.authority,
    })
}

/// What a publishing run does beyond fanout.
pub enum Flavor {
    Fanout,
    Slow(SlowOptions),
    Chat(ChatMix),
}

/// `fanout`: subscribers, paced publications, figures.
pub async fn fanout(args: &FanoutArgs) -> anyhow::Result<Summary> {
    publishing(
        &args.common,
        &args.publish,
        args.subscribers,
        args.topics,
        Flavor::Fanout,
    )
    .await
}

/// `slow`: fanout with a fraction of subscribers that stop reading.
pub async fn slow(args: &crate::cli::SlowArgs) -> anyhow::Result<Summary> {
    let f = &args.fanout;
    publishing(
        &f.common,
        &f.publish,
        f.subscribers,
        f.topics,
        Flavor::Slow(args.slow),
    )
    .await
}

/// `chat`: the chat mix.
pub async fn chat(args: &ChatArgs) -> anyhow::Result<Summary> {
    if args.large_channels + args.small_channels == 0 {
        bail!("give some channels (--large-channels, --small-channels)");
    }
    if !(0.0..=1.0).contains(&args.large_share) {
        bail!("--large-share must be within 0..=1");
    }
    let mix = ChatMix {
        large_channels: args.large_channels,
        small_channels: args.small_channels,
        channels_per_user: args.channels_per_user,
        large_share: args.large_share,
        churn_fraction: args.churn_fraction,
        churn_period_ms: args.churn_period.as_millis().max(1) as u64,
        typing_fraction: args.typing_fraction,
        typing_period_ms: args.typing_period.as_millis().max(1) as u64,
        typing_burst: args.typing_burst,
        seed: args.seed,
    };
    let topics = mix.topics();
    publishing(
        &args.common,
        &args.publish,
        args.users,
        topics,
        Flavor::Chat(mix),
    )
    .await
}

/// Subscribers, paced publications, figures: fanout, slow and chat.
async fn publishing(
    common: &Common,
    publish: &PublishArgs,
    connections: u64,
    topics: u32,
    flavor: Flavor,
) -> anyhow::Result<Summary> {
    if topics == 0 {
        bail!("--topics must be at least 1");
    }
    if publish.rate.is_nan() || publish.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let sink = sink_spec(publish, common.allow_remote).await?;
    let slow = match &flavor {
        Flavor::Slow(s) => Some(*s),
        _ => None,
    };
    let (kind, pick) = match &flavor {
        Flavor::Chat(mix) => (FleetKind::Chat(mix.clone()), TopicPick::Chat(mix.clone())),
        _ => (FleetKind::Plain, TopicPick::RoundRobin),
    };
    let shape = Shape {
        connections,
        topics,
        slow,
        kind,
    };
    let pid = common.gateway_pid;
    let (mut fleets, mut collector, phase_s) = connect_phase(common, &shape).await?;
    let mut healthy_by_topic = vec![0u64; topics as usize];
    for summary in collector.connected.iter().flatten() {
        for (t, n) in summary.healthy_by_topic.iter().enumerate() {
            if let Some(slot) = healthy_by_topic.get_mut(t) {
                *slot += n;
            }
        }
    }
    let rss_before = pid.and_then(procfs::rss_bytes);
    let cpu = CpuWindow::start(pid, &fleets);
    let publish_start_ns = unix_now().as_nanos() as u64;
    collector.phase = "publish";
    let publisher = tokio::spawn(publisher::run(publisher::Plan {
        sink,
        pick,
        rate: publish.rate,
        topics,
        duration: common.duration,
        payload_bytes: publish.payload_bytes,
        op: publish.op.clone(),
        connections: publish.publishers,
    }));
    // The publisher stops by itself shortly after --duration (see `publisher`); the abort
    // below only ends one whose endpoint stopped answering.
    collector
        .pump_until(
            cpu.started + common.duration + Duration::from_secs(10),
            |_| publisher.is_finished(),
        )
        .await;
    if !publisher.is_finished() {
        publisher.abort();
    }
    let published = publisher.await.unwrap_or_default();
    let expected: u64 = healthy_by_topic
        .iter()
        .zip(&published.published)
        .map(|(subs, pubs)| subs * pubs)
        .sum();
    collector.phase = "drain";
    collector
        .pump_until(Instant::now() + publish.drain, |c| {
            // Chat: churners receive too, so the count says nothing; wait the drain out
            // unless stable users got everything (checked at the end).
            c.deliveries() >= expected && !matches!(flavor, Flavor::Chat(_))
        })
        .await;
    let rss_after = pid.and_then(procfs::rss_bytes);
    let spent = cpu.finish(&fleets);
    let cpu_window_s = spent.window_s;
    let wait = slow.map_or(Duration::ZERO, |s| s.slow_drain) + Duration::from_secs(30);
    let merged = stop_phase(
        &mut fleets,
        &mut collector,
        published.published.clone(),
        wait,
    )
    .await?;

    let sum = &merged.sum;
    let window_s = if sum.last_delivery_ns > publish_start_ns {
        (sum.last_delivery_ns - publish_start_ns) as f64 / 1e9
    } else {
        published.elapsed.as_secs_f64()
    };
    let deliveries = merged.latency.len();
    let cpu_s = spent.gateway_s;
    let gateway = pid.map(|pid| GatewayFigures {
        pid,
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        rss_delta_bytes: rss_after.zip(rss_before).map(|(a, b)| a as i64 - b as i64),
        cpu_s,
        window_s: cpu_window_s,
        cpu_utilization: cpu_s.map(|c| c / cpu_window_s),
        deliveries_per_cpu_s: cpu_s.filter(|&c| c > 0.0).map(|c| deliveries as f64 / c),
        ..GatewayFigures::default()
    });
    let fanout = FanoutFigures {
        subscribers: connections,
        healthy_subscribers: sum.healthy,
        topics,
        rate_target: publish.rate,
        publications: published.total(),
        publish_attempts: published.attempted,
        publish_errors: published.errors.clone(),
        publish_rate: published.total() as f64 / published.elapsed.as_secs_f64().max(1e-6),
        payload_bytes: publish.payload_bytes,
        window_s,
        expected_deliveries: expected,
        deliveries,
        deliveries_per_s: deliveries as f64 / window_s.max(1e-6),
        latency_us: Percentiles::of(&merged.latency),
        losses: sum.losses,
        duplicates: sum.duplicates,
        reordered: sum.reordered,
        decode_errors: sum.decode_errors,
    };
    let chat = match &flavor {
        Flavor::Chat(mix) => {
            let c = sum.chat.clone().unwrap_or_default();
            Some(chat_figures(mix, &c, sum.healthy, expected, &merged))
        }
        _ => None,
    };
    Ok(Summary {
        mode: match flavor {
            Flavor::Fanout => "fanout",
            Flavor::Slow(_) => "slow",
            Flavor::Chat(_) => "chat",
        },
        encoding: encoding_name(common),
        url: common.url.clone(),
        processes: fleets.len(),
        connect: connect_figures(connections, &merged, phase_s),
        gateway,
        fanout: Some(fanout),
        slow: slow.map(|_| SlowFigures {
            slow_subscribers: sum.slow,
            ends: sum.slow_ends.clone(),
        }),
        chat,
        ends: sum.ends.clone(),
        harness_cpu_s: spent.harness_s,
        fleet_failures: collector.failures.clone(),
        timeline: collector.timeline.clone(),
        ..Summary::default()
    })
}

fn chat_figures(
    mix: &ChatMix,
    c: &ChatReport,
    stable_users: u64,
    stable_expected: u64,
    merged: &report::Merged,
) -> ChatFigures {
    ChatFigures {
        large_channels: mix.large_channels,
        small_channels: mix.small_channels,
        stable_users,
        stable_expected,
        stable_received: merged.sum.tracked_received,
        activity: c.clone(),
    }
}

/// `storm`: connect everyone, then per round make every connection drop at one instant
/// and reconnect; the next round starts once everyone is back (or gave up) and settled.
pub async fn storm(args: &StormArgs) -> anyhow::Result<Summary> {
    let common = &args.common;
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let shape = Shape {
        connections: args.connections,
        topics: args.topics,
        slow: None,
        kind: FleetKind::Storm(StormSpec {
            rounds: args.rounds,
            reconnect_timeout_ms: args.reconnect_timeout.as_millis() as u64,
            backoff_ms: args.backoff.as_millis() as u64,
            graceful: args.graceful,
        }),
    };
    let pid = common.gateway_pid;
    let (mut fleets, mut collector, phase_s) = connect_phase(common, &shape).await?;
    let participants: u64 = collector.connected.iter().flatten().map(|c| c.open).sum();
    let cpu = CpuWindow::start(pid, &fleets);
    for round in 0..args.rounds {
        collector.phase = "settle";
        collector.pump_for(args.settle).await;
        // Far enough ahead for the control line to reach every worker first.
        let at_ns = unix_now().as_nanos() as u64 + 200_000_000;
        fleets.send(&Control::Storm { round, at_ns }).await;
        collector.phase = "storm";
        let target = participants * u64::from(round + 1);
        let limit = Instant::now() + args.reconnect_timeout + Duration::from_secs(3);
        if !collector.pump_until(limit, |c| c.settled() >= target).await {
            eprintln!("loadtest: storm round {round} not settled in time; going on");
        }
    }
    collector.phase = "settle";
    collector.pump_for(args.settle).await;
    let spent = cpu.finish(&fleets);
    let window_s = spent.window_s;
    let merged = stop_phase(
        &mut fleets,
        &mut collector,
        Vec::new(),
        Duration::from_secs(30),
    )
    .await?;
    let rounds = storm::merge_rounds(
        collector
            .reports
            .iter()
            .flatten()
            .map(|r| r.storm.as_slice()),
    )?;
    let mut errors = std::collections::BTreeMap::new();
    for r in &rounds {
        for (k, v) in &r.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
    }
    let gateway = pid.map(|pid| {
        let cpu_s = spent.gateway_s;
        GatewayFigures {
            pid,
            rss_after_bytes: procfs::rss_bytes(pid),
            cpu_s,
            window_s,
            cpu_utilization: cpu_s.map(|c| c / window_s),
            ..GatewayFigures::default()
        }
    });
    Ok(Summary {
        mode: "storm",
        encoding: encoding_name(common),
        url: common.url.clone(),
        processes: fleets.len(),
        connect: connect_figures(args.connections, &merged, phase_s),
        gateway,
        storm: Some(StormFigures {
            connections: participants,
            graceful: args.graceful,
            rounds,
            errors,
        }),
        ends: merged.sum.ends.clone(),
        harness_cpu_s: spent.harness_s,
        fleet_failures: collector.failures.clone(),
        timeline: collector.timeline.clone(),
        ..Summary::default()
    })
}
