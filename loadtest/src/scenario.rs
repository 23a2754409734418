//! The runs themselves: checking targets, splitting connections into fleets, driving the
//! phases (connect, settle/publish, drain, stop) and building the summary.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::time::Instant;

use crate::cli::{Common, FanoutArgs, IdleArgs, SlowOptions};
use crate::collect::Collector;
use crate::fleet::{Control, FleetSpec};
use crate::histo::Percentiles;
use crate::procfs;
use crate::publisher;
use crate::report::{self, ConnectFigures, FanoutFigures, GatewayFigures, SlowFigures, Summary};
use crate::targets;
use crate::tokens::{unix_now, TokenSource};
use crate::workers::{self, Fleets};

/// Most connections one process may be asked to hold (20 000 descriptors per process).
const HARD_MAX_PER_PROCESS: u64 = 18_000;

/// Connections, subscriptions and roles of a run.
struct Shape {
    connections: u64,
    topics: u32,
    slow: Option<SlowOptions>,
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
    let tokens = match (&common.tokens_file, &common.secret) {
        (Some(path), _) => TokenSource::File {
            path: path.display().to_string(),
        },
        (None, Some(secret)) => TokenSource::Mint {
            secret: secret.clone(),
            ttl_s: common.token_ttl.as_secs(),
        },
        (None, None) => bail!("give --secret (or LOADTEST_SECRET) or --tokens-file"),
    };
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
            read_buffer: common.read_buffer,
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
    let mut collector = Collector::new(events, fleets.len(), common.quiet);
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
    fleets.stop(&Control { published }).await;
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

fn finish(summary: &Summary, common: &Common) -> anyhow::Result<()> {
    print!("{}", summary.render());
    if let Some(path) = &common.json {
        summary.write_json(path)?;
    }
    if !summary.fleet_failures.is_empty() {
        bail!("{} fleet(s) failed", summary.fleet_failures.len());
    }
    Ok(())
}

/// `idle`: hold N connections, then measure the gateway's memory and idle CPU.
pub async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    let common = &args.common;
    let shape = Shape {
        connections: args.connections,
        topics: 0,
        slow: None,
    };
    let pid = common.gateway_pid;
    let rss_before = pid.and_then(procfs::rss_bytes);
    let (mut fleets, mut collector, phase_s) = connect_phase(common, &shape).await?;
    collector.phase = "settle";
    collector.pump_for(args.settle).await;
    let rss_after = pid.and_then(procfs::rss_bytes);
    let open_after_settle = collector.open();
    let cpu0 = pid.and_then(procfs::cpu_seconds);
    let harness0 = harness_cpu(&fleets);
    let window = Instant::now();
    collector.phase = "idle";
    collector.pump_for(common.duration).await;
    let window_s = window.elapsed().as_secs_f64();
    let cpu1 = pid.and_then(procfs::cpu_seconds);
    let harness1 = harness_cpu(&fleets);
    let merged = stop_phase(
        &mut fleets,
        &mut collector,
        Vec::new(),
        Duration::from_secs(30),
    )
    .await?;

    let gateway = pid.map(|pid| {
        let delta = rss_after.zip(rss_before).map(|(a, b)| a as i64 - b as i64);
        let cpu_s = cpu1.zip(cpu0).map(|(b, a)| b - a);
        GatewayFigures {
            pid,
            rss_before_bytes: rss_before,
            rss_after_bytes: rss_after,
            rss_delta_bytes: delta,
            bytes_per_connection: delta
                .filter(|_| open_after_settle > 0)
                .map(|d| d as f64 / open_after_settle as f64),
            cpu_s,
            window_s,
            cpu_utilization: cpu_s.map(|c| c / window_s),
            deliveries_per_cpu_s: None,
        }
    });
    let summary = Summary {
        mode: "idle",
        encoding: encoding_name(common),
        url: common.url.clone(),
        processes: fleets.len(),
        connect: connect_figures(args.connections, &merged, phase_s),
        gateway,
        fanout: None,
        slow: None,
        ends: merged.sum.ends.clone(),
        harness_cpu_s: harness1.zip(harness0).map(|(b, a)| b - a),
        fleet_failures: collector.failures.clone(),
        timeline: collector.timeline.clone(),
    };
    finish(&summary, common)
}

/// `fanout` (and `slow`, with `slow` options): subscribers, paced publications, figures.
pub async fn fanout(args: FanoutArgs, slow: Option<SlowOptions>) -> anyhow::Result<()> {
    let common = &args.common;
    if args.topics == 0 {
        bail!("--topics must be at least 1");
    }
    if args.rate.is_nan() || args.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let admin = targets::parse(&args.admin, "http")
        .await
        .context("--admin")?;
    targets::check_loopback("admin", admin.addr.ip(), common.allow_remote)?;
    let shape = Shape {
        connections: args.subscribers,
        topics: args.topics,
        slow,
    };
    let pid = common.gateway_pid;
    let (mut fleets, mut collector, phase_s) = connect_phase(common, &shape).await?;
    let mut healthy_by_topic = vec![0u64; args.topics as usize];
    for summary in collector.connected.iter().flatten() {
        for (t, n) in summary.healthy_by_topic.iter().enumerate() {
            if let Some(slot) = healthy_by_topic.get_mut(t) {
                *slot += n;
            }
        }
    }
    let rss_before = pid.and_then(procfs::rss_bytes);
    let cpu0 = pid.and_then(procfs::cpu_seconds);
    let harness0 = harness_cpu(&fleets);
    let publish_start_ns = unix_now().as_nanos() as u64;
    let started = Instant::now();
    collector.phase = "publish";
    let publisher = tokio::spawn(publisher::run(publisher::Plan {
        admin: admin.addr,
        host: admin.authority.clone(),
        rate: args.rate,
        topics: args.topics,
        duration: common.duration,
        payload_bytes: args.payload_bytes,
        op: args.op.clone(),
        connections: args.publishers,
    }));
    // Publishing is bounded by --duration; allow a little for the last requests.
    collector
        .pump_until(started + common.duration + Duration::from_secs(10), |_| {
            publisher.is_finished()
        })
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
        .pump_until(Instant::now() + args.drain, |c| c.deliveries() >= expected)
        .await;
    let cpu1 = pid.and_then(procfs::cpu_seconds);
    let rss_after = pid.and_then(procfs::rss_bytes);
    let harness1 = harness_cpu(&fleets);
    let cpu_window_s = started.elapsed().as_secs_f64();
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
    let cpu_s = cpu1.zip(cpu0).map(|(b, a)| b - a);
    let gateway = pid.map(|pid| GatewayFigures {
        pid,
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        rss_delta_bytes: rss_after.zip(rss_before).map(|(a, b)| a as i64 - b as i64),
        bytes_per_connection: None,
        cpu_s,
        window_s: cpu_window_s,
        cpu_utilization: cpu_s.map(|c| c / cpu_window_s),
        deliveries_per_cpu_s: cpu_s.filter(|&c| c > 0.0).map(|c| deliveries as f64 / c),
    });
    let fanout = FanoutFigures {
        subscribers: args.subscribers,
        healthy_subscribers: sum.healthy,
        topics: args.topics,
        rate_target: args.rate,
        publications: published.total(),
        publish_attempts: published.attempted,
        publish_errors: published.errors.clone(),
        publish_rate: published.total() as f64 / published.elapsed.as_secs_f64().max(1e-6),
        payload_bytes: args.payload_bytes,
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
    let summary = Summary {
        mode: if slow.is_some() { "slow" } else { "fanout" },
        encoding: encoding_name(common),
        url: common.url.clone(),
        processes: fleets.len(),
        connect: connect_figures(args.subscribers, &merged, phase_s),
        gateway,
        fanout: Some(fanout),
        slow: slow.map(|_| SlowFigures {
            slow_subscribers: sum.slow,
            ends: sum.slow_ends.clone(),
        }),
        ends: sum.ends.clone(),
        harness_cpu_s: harness1.zip(harness0).map(|(b, a)| b - a),
        fleet_failures: collector.failures.clone(),
        timeline: collector.timeline.clone(),
    };
    finish(&summary, common)
}
